"""Specification of the Frechet classifier distance (trainers/quality.py)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from trainers.generative_model import to_unit_range
from trainers.quality import (
    FEATURES,
    FeatureClassifier,
    classifier_frechet_distance,
    frechet_distance,
    train_feature_classifier,
)

LEVELS = 17  # sklearn's 8x8 digits take values 0..16


def random_covariance(size: int, rank: int, seed: int) -> np.ndarray:
    factor = np.random.default_rng(seed).normal(size=(size, rank))
    return factor @ factor.T


def rotation(size: int, seed: int) -> np.ndarray:
    orthogonal, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(size, size)))
    return orthogonal


def diagonal_closed_form(mu1, variances1, mu2, variances2) -> float:
    return float(
        ((mu1 - mu2) ** 2).sum() + ((np.sqrt(variances1) - np.sqrt(variances2)) ** 2).sum()
    )


@pytest.mark.parametrize("rank", [16, 5], ids=["full_rank", "singular"])
def test_frechet_distance_is_zero_for_identical_statistics(rank: int):
    mean = np.random.default_rng(0).normal(size=16)
    covariance = random_covariance(16, rank, seed=1)
    assert frechet_distance(mean, covariance, mean, covariance) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    variances1, variances2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    distance = frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2))
    assert distance == pytest.approx(diagonal_closed_form(mu1, variances1, mu2, variances2))


def test_frechet_distance_matches_the_closed_form_when_covariances_share_eigenvectors():
    # Rotating both Gaussians together changes no distance, and zero variances (rank-deficient
    # covariances, as with fewer images than features) are handled exactly.
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    variances1 = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 0.0])
    variances2 = np.array([1.0, 0.0, 1.0, 0.25, 9.0, 0.0])
    turn = rotation(6, seed=4)
    distance = frechet_distance(
        turn @ mu1,
        turn @ np.diag(variances1) @ turn.T,
        turn @ mu2,
        turn @ np.diag(variances2) @ turn.T,
    )
    assert distance == pytest.approx(diagonal_closed_form(mu1, variances1, mu2, variances2))


def test_frechet_distance_is_symmetric_for_general_covariances():
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    sigma1, sigma2 = random_covariance(10, 10, seed=6), random_covariance(10, 4, seed=7)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert forward == pytest.approx(frechet_distance(mu2, sigma2, mu1, sigma1))
    assert forward > 0


@cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.long)[:, None]  # (1797, 1, 8, 8)
    return images, torch.tensor(data.target)


@pytest.fixture(scope="module")
def classifier() -> FeatureClassifier:
    images, labels = digits()
    return train_feature_classifier(images[:1200], labels[:1200], LEVELS, epochs=5, seed=0)


def test_feature_classifier_recognises_held_out_digits(classifier: FeatureClassifier):
    images, labels = digits()
    with torch.no_grad():
        predictions = classifier(to_unit_range(images[1200:], LEVELS)).argmax(dim=1)
    assert (predictions == labels[1200:]).float().mean() > 0.8
    assert classifier.features(to_unit_range(images[:5], LEVELS)).shape == (5, FEATURES)


def test_fcd_scores_held_out_digits_far_closer_than_noise_or_blank_images(
    classifier: FeatureClassifier,
):
    images, _ = digits()
    real, held_out = images[:500], images[1200:1700]
    noise = torch.randint(0, LEVELS, real.shape, generator=torch.Generator().manual_seed(0))
    held_out_score = classifier_frechet_distance(classifier, real, held_out, LEVELS)
    noise_score = classifier_frechet_distance(classifier, real, noise, LEVELS)
    assert 0 < held_out_score < noise_score / 10
    half_blank = held_out.clone()
    half_blank[:250] = 0
    blank_score = classifier_frechet_distance(classifier, real, half_blank, LEVELS)
    assert held_out_score < blank_score < noise_score


def test_fcd_is_zero_between_a_set_of_images_and_itself(classifier: FeatureClassifier):
    images, _ = digits()
    score = classifier_frechet_distance(classifier, images[:300], images[:300], LEVELS)
    assert score == pytest.approx(0.0, abs=1e-6)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    images, labels = digits()
    global_rng = torch.random.get_rng_state()
    first = train_feature_classifier(images[:200], labels[:200], LEVELS, epochs=1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), global_rng)
    second = train_feature_classifier(images[:200], labels[:200], LEVELS, epochs=1, seed=3)
    other = train_feature_classifier(images[:200], labels[:200], LEVELS, epochs=1, seed=4)
    first_weights = first.classify.weight
    assert torch.equal(second.classify.weight, first_weights)
    assert not torch.equal(other.classify.weight, first_weights)


def test_classifier_is_cached_at_the_given_path_and_retrained_when_its_recipe_changes(
    tmp_path: Path,
):
    images, labels = digits()
    path = tmp_path / "fcd" / "digits.pt"
    trained = train_feature_classifier(images[:200], labels[:200], LEVELS, 1, 0, cache_path=path)
    assert path.exists()
    written = path.stat().st_mtime_ns
    cached = train_feature_classifier(images[:200], labels[:200], LEVELS, 1, 0, cache_path=path)
    assert path.stat().st_mtime_ns == written
    assert torch.equal(cached.classify.weight, trained.classify.weight)
    assert not cached.training
    retrained = train_feature_classifier(images[:200], labels[:200], LEVELS, 2, 0, cache_path=path)
    assert not torch.equal(retrained.classify.weight, trained.classify.weight)
    reloaded = train_feature_classifier(images[:200], labels[:200], LEVELS, 2, 0, cache_path=path)
    assert torch.equal(reloaded.classify.weight, retrained.classify.weight)
    assert list(path.parent.iterdir()) == [path]  # no partial files left behind


def test_training_rejects_labels_with_a_single_class():
    images, _ = digits()
    with pytest.raises(ValueError, match=r"labels: FCD needs .* two classes"):
        train_feature_classifier(images[:10], torch.zeros(10, dtype=torch.long), LEVELS, 1, 0)
