"""The job spec contract: examples are valid, bad specs name the field, the value and the line."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.failures import NotRetryable
from jobs.model_params import PARAMS_BY_MODEL
from jobs.recipes import RECIPES
from jobs.search_domains import SEARCH_DOMAINS
from jobs.spec import JobSpec, apply_overrides, load_spec_text, tunable_paths, validate_spec_dict
from jobs.spec_errors import SpecError

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "jobs" / "examples").glob("*.yaml"))
MINIMAL = {"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}}


def errors_of(data: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate_spec_dict(data)
    return [str(error) for error in caught.value.errors]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_is_valid_and_shows_its_command(path: Path) -> None:
    text = path.read_text()
    spec = load_spec_text(text, str(path))
    assert text.splitlines()[0] == f"# genfleet submit jobs/examples/{path.name}"
    assert spec.name


def test_examples_cover_every_model_and_a_sweep() -> None:
    specs = [load_spec_text(path.read_text()) for path in EXAMPLES]
    assert {spec.model.type for spec in specs} == set(PARAMS_BY_MODEL)
    assert any(spec.kind == "sweep" for spec in specs)


def test_defaults_fill_everything_but_model_type_and_dataset() -> None:
    spec = validate_spec_dict(MINIMAL)
    assert spec.kind == "train"
    assert spec.priority == 5
    assert spec.max_attempts == 3
    assert spec.train.epochs == 5 and spec.train.lr == RECIPES["pixelcnn"]["lr"]
    assert spec.scaling.num_workers == 1 and spec.scaling.max_failures == 2
    assert spec.scheduling.wait_timeout is None  # waits until it fits
    assert "scheduling" not in spec.to_yaml_dict()  # no empty section in what people read
    assert spec.model.params.layers == 5 and spec.model.params.channels == 32


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"train": {"lr": -0.1}}, "train.lr: must be > 0, got -0.1"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
        ({"train": {"warmup_steps": -1}}, "train.warmup_steps: must be >= 0, got -1"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay: must be < 1, got 1.0"),
        ({"model": {"type": "pixelcnn_pp", "params": {"ema_decay": 0.999}}}, "model.params.ema_decay: unknown key"),
        ({"priority": 10}, "priority: must be <= 9, got 10"),
        ({"model": {"type": "pixelcnn", "params": {"chanels": 3}}}, "model.params.chanels: unknown key"),
        ({"model": {"type": "pixelcnn", "params": {"layers": "many"}}}, "model.params.layers: must be a valid integer"),
        ({"model": {"type": "vae", "params": {"layers": 3}}}, "model.params.layers: unknown key"),
        ({"model": {"type": "pixelcnn", "params": {"first_kernel": 4}}}, "model.params.first_kernel: must be odd (a centred kernel), got 4"),
        ({"model": {"type": "gan"}}, "model.type: must be one of pixelcnn"),
        ({"model": {"params": {}}}, "model.type: must be one of pixelcnn"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset: must be one of 'digits'"),
        ({"data": {"dataset": "mnist", "root": "../../etc"}}, "data.root: must be a relative folder"),
        ({"data": {"dataset": "mnist", "root": "/etc"}}, "data.root: must be a relative folder"),
        ({"train": {"optimizer": "lbfgs"}}, "train.optimizer: must be one of 'adam'"),
        ({"train": {"precision": "bf16"}}, "train.precision: bf16 needs scaling.use_gpu: true"),
        ({"scaling": {"num_workers": 0}}, "scaling.num_workers: must be >= 1, got 0"),
        ({"scheduling": {"wait_timeout": 0}}, "scheduling.wait_timeout: must be > 0, got 0"),
        ({"scheduling": {"wait_timeout": "soon"}}, "scheduling.wait_timeout: must be a valid number"),
        ({"scheduling": {"max_wait": 60}}, "scheduling.max_wait: unknown key"),
        ({"kind": "sweep"}, "sweep: required when kind is sweep"),
        ({"sweep": {"space": {"train.lr": {"choice": [0.1]}}}}, "sweep: only allowed when kind is sweep"),
        ({"kind": "sweep", "train": {"eval_every": 2}, "sweep": {"space": {"train.lr": {"choice": [0.1]}}}}, "train.eval_every: must be 1 in a sweep"),
        ({"runtime_env": {"pip": ["evil"]}}, "runtime_env: unknown key"),
        ({"name": "../x"}, "name: string should match pattern"),
    ],
)  # fmt: skip
def test_bad_spec_is_rejected_naming_field_and_value(patch: dict, expected: str) -> None:
    data = {**MINIMAL, **patch}
    assert any(expected in error for error in errors_of(data)), errors_of(data)


def sweep_with(space: dict, search: str = "random") -> dict:
    return {**MINIMAL, "kind": "sweep", "sweep": {"search": search, "space": space}}


@pytest.mark.parametrize(
    ("space", "search", "expected"),
    [
        ({"train.learning_rate": {"choice": [0.1]}}, "random", "sweep.space.train.learning_rate: does not name a tunable field"),
        ({"model.params.latent_dim": {"choice": [8]}}, "random", "sweep.space.model.params.latent_dim: does not name"),
        ({"name": {"choice": ["a"]}}, "random", "sweep.space.name: does not name"),
        ({"train.lr": {"choice": [0.1, -1]}}, "random", "sweep.space.train.lr.choice[1]: must be > 0, got -1"),
        ({"train.lr": {"loguniform": [0, 0.1]}}, "random", "space.train.lr.loguniform: bounds must be > 0"),
        ({"train.lr": {"uniform": [0.1, 0.01]}}, "random", "space.train.lr: lower bound must be < upper"),
        ({"train.batch_size": {"grid": [32]}}, "optuna", "grid is not supported by search: optuna"),
        ({"train.lr": {"uniform": [0.01, 0.1]}}, "grid", "search: grid needs grid or choice domains"),
        ({"train.lr": {"between": [1, 2]}}, "random", "sweep.space.train.lr"),
    ],
)  # fmt: skip
def test_bad_search_space_is_rejected(space: dict, search: str, expected: str) -> None:
    errors = errors_of(sweep_with(space, search))
    assert any(expected in error for error in errors), errors


def test_search_space_values_are_checked_against_the_model_params() -> None:
    errors = errors_of(sweep_with({"model.params.channels": {"choice": [32, 2]}}))
    assert errors == ["sweep.space.model.params.channels.choice[1]: must be >= 4, got 2"]


def leaf_paths(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each value of a dumped spec under its dotted path: `{"train": {"lr": 0.1}}` ->
    `{"train.lr": 0.1}`."""
    leaves: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            leaves |= leaf_paths(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


@pytest.mark.parametrize("model_type", list(PARAMS_BY_MODEL))
def test_a_sweep_space_accepts_exactly_the_paths_the_submit_form_offers(model_type: str) -> None:
    base = {"model": {"type": model_type}, "data": {"dataset": "digits"}}
    accepted = []
    for path, value in leaf_paths(JobSpec.model_validate(base).model_dump(mode="json")).items():
        sweep = {**base, "kind": "sweep", "sweep": {"space": {path: {"choice": [value]}}}}
        try:
            validate_spec_dict(sweep)
        except SpecError as exc:
            assert [str(error) for error in exc.errors] == [
                f"sweep.space.{path}: does not name a tunable field of this spec"
            ]
        else:
            accepted.append(path)
    offered = tunable_paths(model_type)
    assert sorted(offered) == sorted(set(offered)) == sorted(accepted)
    # Issue 15: the form offered only the model's params and train.*, the spec accepted more.
    assert {"data.dataset", "data.val_fraction", "scaling.num_workers"} <= set(offered)


def test_the_readme_names_every_search_domain_the_spec_accepts() -> None:
    listed = re.search(r"Search\s+domains: ((?:`\w+`(?:, )?)+)", (ROOT / "README.md").read_text())
    assert listed is not None
    assert re.findall(r"`(\w+)`", listed[1]) == list(SEARCH_DOMAINS)


def test_errors_carry_the_yaml_line_and_file_name() -> None:
    text = "name: x\nmodel:\n  type: pixelcnn\n  params:\n    layers: 0\ndata:\n  dataset: digits\n"
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "specs/x.yaml")
    assert str(caught.value) == "specs/x.yaml: line 5: model.params.layers: must be >= 1, got 0"


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of({**MINIMAL, "train": {"lr": 0, "epochs": -1, "seed": -5}})
    assert len(errors) == 3


# CPU seconds of this process, which other processes on a busy machine do not stretch as they
# do wall time. Generous: each of these is refused in milliseconds; an expanded alias bomb or a
# validation that grows with its input would take minutes.
HOSTILE_SECONDS = 1.0
SWEEP_HEAD = "kind: sweep\nmodel: {type: pixelcnn}\ndata: {dataset: digits}\nsweep:\n  space:\n"


def timed_rejection(text: str | bytes) -> tuple[str, float]:
    started = time.process_time()
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "in.yaml")
    return str(caught.value), time.process_time() - started


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!python/object/apply:os.system ['true']", "could not determine a constructor"),
        ("a: !!python/object/new:subprocess.Popen [[id]]", "could not determine a constructor"),
        ("a: !!python/name:os.system", "could not determine a constructor"),
        ("a: !!python/module:os", "could not determine a constructor"),
        ("a: !!python/object:jobs.spec.JobSpec {}", "could not determine a constructor"),
        ("a: &x [1, 2]\nb: [*x, *x]", "aliases (*name) are not allowed"),
        ("model: [unclosed", "invalid YAML"),
        ("", "empty document"),
        ("- just\n- a list", "a spec must be a mapping, got list"),
        ("a: 1\n---\nb: 2", "expected a single document"),
        (b"\xff\xfe not utf-8", "not UTF-8 text (byte 0)"),
        (b"name: caf\xe9", "not UTF-8 text (byte 9)"),
        ("x: " + "a" * 70_000, "in.yaml: spec is 70003 bytes; the limit is 65536"),
        (b"x: " + b"a" * 70_000, "in.yaml: spec is 70003 bytes; the limit is 65536"),
        ("x: " + "\u00e9" * 40_000, "in.yaml: spec is 80003 bytes; the limit is 65536"),
        ("a: " + "[" * 60_000, "line 1: invalid YAML: while increasing flow level, exceeded maximum nesting depth"),
        ("a: " + "[" * 40 + "]" * 40, "line 1: invalid YAML: specs may nest at most 32 levels deep"),
        ("a: " + "{b: " * 15_000, "line 1: invalid YAML: specs may nest at most 32 levels deep"),
        ("".join(" " * i + f"k{i}:\n" for i in range(40)), "line 33: invalid YAML: specs may nest"),
        ("- " * 30_000, "invalid YAML: specs may nest at most 32 levels deep"),
        ("train: {epochs: " + "9" * 5000 + "}", "line 1: invalid YAML: integers must fit in 64 bits"),
        ("train: {seed: 0x" + "f" * 60_000 + "}", "invalid YAML: integers must fit in 64 bits"),
        ("train: {seed: 9223372036854775808}", "invalid YAML: integers must fit in 64 bits"),
        (SWEEP_HEAD + "    train.lr: {choice: [" + "0.1, " * 12_000 + "0.1]}", "sweep.space.train.lr.choice: list should have at most 100 items"),
        (SWEEP_HEAD + "".join(f"    k{i}: {{choice: [1]}}\n" for i in range(2_000)), "sweep.space: dictionary should have at most 16 items"),
    ],
)  # fmt: skip
def test_hostile_or_broken_yaml_is_rejected_quickly_with_a_clear_error(
    text: str | bytes, expected: str
) -> None:
    message, seconds = timed_rejection(text)
    assert expected in message
    assert message.startswith("in.yaml: ")
    assert seconds < HOSTILE_SECONDS


def test_billion_laughs_is_rejected_quickly() -> None:
    lines = ['a0: &a0 "lol"'] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)
    ]
    message, seconds = timed_rejection("\n".join(lines))
    assert message == "in.yaml: line 2: invalid YAML: YAML aliases (*name) are not allowed in specs"
    assert seconds < HOSTILE_SECONDS


def test_a_largest_spec_of_many_search_values_is_judged_quickly() -> None:
    """Every domain value is validated as a whole spec: the caps keep that work small."""
    tunable = ["lr", "batch_size", "weight_decay", "lr_decay", "grad_clip", "seed", "epochs"]
    tunable += ["num_samples", "eval_every", "sample_every", "checkpoint_every"]
    tunable += ["max_steps_per_epoch"]
    values = ", ".join(["1"] * 100)
    space = "".join(f"    train.{name}: {{choice: [{values}]}}\n" for name in tunable)
    started = time.process_time()
    spec = load_spec_text(SWEEP_HEAD + space)
    assert time.process_time() - started < HOSTILE_SECONDS
    assert len(spec.sweep.space) == 12


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"train": {"grad_clip": float("inf")}}, "train.grad_clip: must be a finite number, got inf"),
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number, got nan"),
        ({"kind": "sweep", "sweep": {"space": {"train.grad_clip": {"uniform": [1, float("inf")]}}}}, "sweep.space.train.grad_clip.uniform.1: must be a finite number, got inf"),
        ({"kind": "sweep", "sweep": {"space": {"train.grad_clip": {"choice": [1, float("inf")]}}}}, "sweep.space.train.grad_clip.choice[1]: must be a finite number, got inf"),
        ({"kind": "sweep", "sweep": {"metric": "__import__('os')", "space": {"train.lr": {"choice": [0.1]}}}}, "sweep.metric: string should match pattern"),
    ],
)  # fmt: skip
def test_values_json_cannot_store_are_rejected(patch: dict, expected: str) -> None:
    """JSON has no inf or NaN: a stored spec holding one would fail when a dispatcher claims it."""
    data = {**MINIMAL, **patch}
    assert any(expected in error for error in errors_of(data)), errors_of(data)


def test_sweep_trial_overrides_produce_a_valid_train_spec() -> None:
    spec = load_spec_text(
        (Path(__file__).parent.parent / "jobs/examples/pixelcnn_sweep_digits.yaml").read_text()
    )
    trial = apply_overrides(
        spec, {"train.lr": 0.003, "model.params.channels": 16, "train.batch_size": 32}
    )
    assert trial.kind == "train" and trial.sweep is None
    assert (trial.train.lr, trial.model.params.channels, trial.train.batch_size) == (0.003, 16, 32)


@pytest.mark.parametrize(
    ("search", "space", "max_concurrent", "trials", "cpus"),
    [
        ("random", {"train.lr": {"uniform": [0.001, 0.01]}}, 3, 8, 6.0),
        ("random", {"train.lr": {"grid": [0.001, 0.01]}}, 32, 16, 32.0),
        ("grid", {"train.lr": {"grid": [0.001, 0.01]}, "train.batch_size": {"choice": [32, 64, 128]}}, 32, 48, 64.0),
        ("optuna", {"train.batch_size": {"choice": [32, 64]}}, 2, 8, 4.0),
    ],
)  # fmt: skip
def test_a_sweep_needs_the_resources_of_every_trial_it_runs_at_once(
    search: str, space: dict, max_concurrent: int, trials: int, cpus: float
) -> None:
    data = sweep_with(space, search)
    data["sweep"] |= {"num_samples": 8, "max_concurrent": max_concurrent}
    data["scaling"] = {"num_workers": 2}
    spec = validate_spec_dict(data)
    assert spec.sweep is not None
    assert (spec.sweep.trials, spec.needs_cpus, spec.needs_gpus) == (trials, cpus, 0.0)


def test_json_schema_describes_every_model_variant() -> None:
    schema = JobSpec.model_json_schema()
    text = yaml.safe_dump(schema)
    for model_type in PARAMS_BY_MODEL:
        assert model_type in text
    assert schema["additionalProperties"] is False


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)  # fmt: skip
SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "name": JSONISH,
        "kind": st.sampled_from(["train", "sweep", "other"]) | JSONISH,
        "priority": st.integers(-3, 12) | JSONISH,
        "model": st.fixed_dictionaries(
            {"type": st.sampled_from([*PARAMS_BY_MODEL, "nope"])},
            optional={"params": st.dictionaries(st.sampled_from(["layers", "channels", "latent_dim", "x"]), JSONISH)},
        ) | JSONISH,
        "data": st.fixed_dictionaries({"dataset": st.sampled_from(["digits", "mnist", "x"])}, optional={"root": JSONISH}) | JSONISH,
        "train": st.dictionaries(st.sampled_from(["lr", "epochs", "batch_size", "seed", "zzz"]), JSONISH),
        "sweep": st.fixed_dictionaries({"space": st.dictionaries(st.sampled_from(["train.lr", "model.params.channels", "bad"]), JSONISH)}) | JSONISH,
    },
)  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SECTIONS)
def test_fuzzed_spec_dicts_never_crash_the_validator(data: dict) -> None:
    try:
        spec = validate_spec_dict(data)
    except SpecError as exc:
        assert exc.errors
        assert all(error.message for error in exc.errors)
    else:
        assert isinstance(spec, JobSpec)


def test_a_trial_value_the_spec_refuses_is_a_spec_error_naming_the_field() -> None:
    spec = load_spec_text(
        (Path(__file__).parent.parent / "jobs/examples/pixelcnn_sweep_digits.yaml").read_text()
    )
    with pytest.raises(SpecError) as refused:
        apply_overrides(spec, {"train.lr": -1.0})
    assert isinstance(refused.value, NotRetryable)
    assert [error.field for error in refused.value.errors] == ["train.lr"]
