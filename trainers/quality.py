"""Frechet classifier distance (FCD): an offline sample-quality score for one dataset.

What it is, exactly:
1. `train_feature_classifier` fits `FeatureClassifier`, a three-conv CNN, to the dataset's own
   labelled images for a few epochs on CPU (seeded; cached at a path the caller gives).
2. Real and generated images are embedded by its penultimate layer: the ReLU features of the
   last conv, global-average-pooled to FEATURES numbers per image.
3. A Gaussian (mean, covariance) is fitted to each set of embeddings, and the score is the
   Frechet distance between the two Gaussians,
       ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)).
   Lower is better; 0 means identical feature statistics.

This is the recipe of FID (Heusel et al. 2017) with Inception-v3 swapped for a small classifier
trained on the data itself, so that it runs offline and on 8x8 images. FCD numbers are NOT
comparable to Inception FID, nor across datasets or classifiers (other seed, epochs or training
set), and the estimate rises as the number of images falls: compare models only under the same
cached classifier with the same number of real and generated images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.generative_model import to_unit_range

FEATURES = 64
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


class FeatureClassifier(nn.Module):
    """Images in [-1, 1] (B, C, H, W) -> class logits; `features` is the layer FCD compares."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, FEATURES, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),  # any image size -> one vector
            nn.Flatten(),
        )
        self.classify = nn.Linear(FEATURES, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)  # (B, FEATURES)

    def forward(self, images: Tensor) -> Tensor:
        return self.classify(self.features(images))  # (B, num_classes)


def train_feature_classifier(
    images: Tensor,
    labels: Tensor,
    levels: int,
    epochs: int,
    seed: int,
    cache_path: str | Path | None = None,
) -> FeatureClassifier:
    """The classifier for `images` (N, C, H, W) levels with `labels` (N,), in eval mode.

    With `cache_path`, a classifier saved there for the same image count, shape, levels, classes,
    epochs and seed is loaded instead of trained, and a newly trained one is saved there. The
    global RNG is left as it was, so calling this mid-training changes no training run.
    """
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise ValueError("labels: FCD needs labelled data with at least two classes, got one")
    config = {
        "images": len(images),
        "shape": list(images.shape[1:]),
        "levels": levels,
        "num_classes": num_classes,
        "epochs": epochs,
        "seed": seed,
    }
    path = Path(cache_path) if cache_path is not None else None
    if path is not None and path.exists():
        cached = torch.load(path, weights_only=True)
        if cached["config"] == config:
            classifier = FeatureClassifier(images.shape[1], num_classes)
            classifier.load_state_dict(cached["state_dict"])
            return classifier.eval()
    classifier = _fit(images.cpu(), labels.cpu(), levels, epochs, seed, num_classes)
    if path is not None:
        _save_atomically({"config": config, "state_dict": classifier.state_dict()}, path)
    return classifier.eval()


def _fit(
    images: Tensor, labels: Tensor, levels: int, epochs: int, seed: int, num_classes: int
) -> FeatureClassifier:
    inputs = to_unit_range(images, levels)  # (N, C, H, W)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: a CUDA run's RNG stays untouched
        classifier = FeatureClassifier(images.shape[1], num_classes)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
        shuffle = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for batch in torch.randperm(len(inputs), generator=shuffle).split(BATCH_SIZE):
                loss = F.cross_entropy(classifier(inputs[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return classifier


def _save_atomically(payload: dict[str, object], path: Path) -> None:
    """Write then rename, so that concurrent evaluators never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


@torch.no_grad()
def classifier_features(classifier: FeatureClassifier, images: Tensor, levels: int) -> np.ndarray:
    """Penultimate features (N, FEATURES) of `images` (N, C, H, W) levels, float64."""
    classifier.eval()
    device = next(classifier.parameters()).device
    chunks = [
        classifier.features(to_unit_range(batch.to(device), levels))
        for batch in images.split(BATCH_SIZE)
    ]
    return torch.cat(chunks).double().cpu().numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F)."""
    if len(features) < 2:
        raise ValueError(f"images: a covariance needs at least 2 images, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the same eigenvalues,
    but of a symmetric PSD matrix, so `eigvalsh` is exact and stable where sqrtm of the
    non-symmetric product would return complex noise for singular covariances.
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_cross_root = np.sqrt(eigenvalues.clip(min=0.0)).sum()
    difference = mu1 - mu2
    distance = difference @ difference + np.trace(sigma1) + np.trace(sigma2)
    return max(0.0, float(distance - 2.0 * trace_cross_root))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(eigenvalues.clip(min=0.0))) @ eigenvectors.T


def classifier_frechet_distance(
    classifier: FeatureClassifier, real_levels: Tensor, fake_levels: Tensor, levels: int
) -> float:
    """FCD between real and generated images, both (N, C, H, W) levels."""
    real = feature_statistics(classifier_features(classifier, real_levels, levels))
    fake = feature_statistics(classifier_features(classifier, fake_levels, levels))
    return frechet_distance(*real, *fake)
