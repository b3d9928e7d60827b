"""Default recipes: every train key a spec leaves out comes from its model's recipe."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.recipes import RECIPES
from jobs.spec import TrainSpec, apply_overrides, validate_spec_dict

LIKELIHOOD_MODELS = {"pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "pixelrnn_row"}
LIKELIHOOD_MODELS |= {"pixelrnn_diag", "vae"}


def spec_of(model_type: str, **train: Any) -> dict[str, Any]:
    return {"model": {"type": model_type}, "data": {"dataset": "digits"}, "train": train}


def test_every_likelihood_model_and_only_those_has_a_recipe() -> None:
    assert set(RECIPES) == LIKELIHOOD_MODELS


@pytest.mark.parametrize("model_type", sorted(RECIPES))
def test_a_spec_that_sets_no_train_value_gets_its_models_recipe(model_type: str) -> None:
    train = validate_spec_dict(spec_of(model_type)).train
    assert {key: getattr(train, key) for key in RECIPES[model_type]} == RECIPES[model_type]
    assert train.epochs == TrainSpec().epochs  # keys the recipe leaves out keep their defaults


def test_a_recipe_differs_from_the_plain_train_defaults() -> None:
    """Otherwise the validator that applies it could be dropped unnoticed."""
    plain = TrainSpec()
    for recipe in RECIPES.values():
        assert any(getattr(plain, key) != value for key, value in recipe.items())


def test_explicit_train_values_win_over_the_recipe() -> None:
    recipe = RECIPES["pixelcnn_pp"]
    train = validate_spec_dict(spec_of("pixelcnn_pp", lr=0.0123, ema_decay=0)).train
    assert (train.lr, train.ema_decay) == (0.0123, 0.0)
    assert (train.lr_schedule, train.warmup_steps) == (
        recipe["lr_schedule"],
        recipe["warmup_steps"],
    )


@pytest.mark.parametrize("model_type", ["autoencoder", "dcgan"])
def test_models_without_a_recipe_keep_the_train_defaults(model_type: str) -> None:
    assert validate_spec_dict(spec_of(model_type)).train == TrainSpec()


def test_pixelcnn_pp_still_evaluates_with_its_papers_weight_average() -> None:
    assert validate_spec_dict(spec_of("pixelcnn_pp")).train.ema_decay == 0.999


def test_the_stored_spec_shows_the_effective_values_and_reads_back_equal() -> None:
    spec = validate_spec_dict(spec_of("vae", epochs=2))
    stored = spec.to_yaml_dict()
    assert stored["train"]["lr"] == RECIPES["vae"]["lr"]
    assert stored["train"]["warmup_steps"] == RECIPES["vae"]["warmup_steps"]
    assert validate_spec_dict(stored) == spec


def test_a_sweep_trial_keeps_the_recipe_except_what_it_tunes() -> None:
    data = spec_of("gated_pixelcnn") | {
        "kind": "sweep",
        "sweep": {"space": {"train.lr": {"choice": [0.0005, 0.002]}}},
    }
    trial = apply_overrides(validate_spec_dict(data), {"train.lr": 0.0005})
    assert trial.train.lr == 0.0005
    assert trial.train.warmup_steps == RECIPES["gated_pixelcnn"]["warmup_steps"]
