"""Datasets as integer levels, split into train and val by a seed (genfleet issue 3, section 3).

Every dataset yields `(image (C, H, W) int64 levels, label int64)` from tensors held in memory,
so a DistributedSampler can index any item on any rank. Files live under GENFLEET_DATA_DIR;
nothing outside it is read, whatever `data.root` or a symlink says.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from jobs.spec import DataSpec
from trainers.api import ImageShape

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# binarized_mnist is binarized from the MNIST files, so both share one download folder.
DEFAULT_FOLDERS = {"binarized_mnist": "mnist"}
DIGITS_CSV = Path("datasets", "data", "digits.csv.gz")  # inside scikit-learn's package

# What torchvision needs on disk, named in the error a user sees when it is missing.
TORCHVISION_FILES = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta",
}
TORCHVISION_FILES["binarized_mnist"] = TORCHVISION_FILES["mnist"]


class DatasetError(Exception):
    """Data cannot be loaded; the message names the folder or file and what was expected."""


class LevelImages(Dataset[tuple[Tensor, Tensor]]):
    """Images (N, C, H, W) stored as uint8 levels with labels (N,), served as int64."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].long(), self.labels[index]


class DynamicallyBinarized(Dataset[tuple[Tensor, Tensor]]):
    """Each pixel ~ Bernoulli(intensity / 255), redrawn every epoch (Salakhutdinov & Murray 2008
    fixed one binarization; dynamic binarization as in Burda et al. 2016 regularises better).

    The draw of item i depends only on (seed, epoch, i), so every rank and a resumed run see the
    same binary image whatever order the sampler visits items in.
    """

    def __init__(self, intensities: Tensor, labels: Tensor, seed: int) -> None:
        self.intensities = intensities  # (N, 1, H, W) uint8 in [0, 255]
        self.labels = labels
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.intensities)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = binarize(self.intensities[index], self.seed, self.epoch, index)
        return image, self.labels[index]


def binarize(intensities: Tensor, seed: int, epoch: int, index: int) -> Tensor:
    """One Bernoulli draw per pixel with p = intensity / 255, as int64 levels {0, 1}."""
    uniform = np.random.default_rng([seed, epoch, index]).random(tuple(intensities.shape))
    return torch.from_numpy(uniform < intensities.numpy() / 255.0).long()


@dataclass(frozen=True)
class Datasets:
    train: Dataset[tuple[Tensor, Tensor]]
    val: Dataset[tuple[Tensor, Tensor]]
    shape: ImageShape
    num_classes: int
    binarization: Literal["dynamic", "none"]


def load_dataset(data: DataSpec, settings_data_dir: Path, seed: int) -> Datasets:
    """Train and val sets of `data.dataset`, split by `seed` with `data.val_fraction` held out."""
    if data.dataset == "digits":
        images, labels, levels = _digits()
    elif data.dataset == "image_folder":
        images, labels = read_image_folder(
            dataset_folder(data, settings_data_dir), data.image_size, data.grayscale
        )
        levels = 256
    else:
        images, labels = _torchvision_train_set(data, dataset_folder(data, settings_data_dir))
        levels = 2 if data.dataset == "binarized_mnist" else 256
    train_index, val_index = split_indices(len(images), data.val_fraction, seed)
    num_classes = int(labels.max()) + 1
    shape = ImageShape(images.shape[1], images.shape[2], images.shape[3], levels)
    if data.dataset != "binarized_mnist":
        train = LevelImages(images[train_index], labels[train_index])
        val = LevelImages(images[val_index], labels[val_index])
        return Datasets(train, val, shape, num_classes, "none")
    # Val is binarized once, from the seed, so its numbers compare across epochs.
    val_images = torch.stack([binarize(images[i], seed, 0, int(i)) for i in val_index]).to(
        torch.uint8
    )
    train = DynamicallyBinarized(images[train_index], labels[train_index], seed)
    return Datasets(
        train, LevelImages(val_images, labels[val_index]), shape, num_classes, "dynamic"
    )


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint (train, val) index sets covering range(count), the same for the same seed."""
    val_count = min(max(1, round(count * val_fraction)), count - 1)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[val_count:].sort().values, order[:val_count].sort().values


def dataset_folder(data: DataSpec, data_dir: Path) -> Path:
    """`data.root` (or the dataset's cache folder) under `data_dir`, refused if it leaves it."""
    relative = data.root or DEFAULT_FOLDERS.get(data.dataset, data.dataset)
    base = data_dir.resolve()
    folder = (base / relative).resolve()
    if not folder.is_relative_to(base):
        raise DatasetError(
            f"data.root: {relative!r} resolves to {folder}, outside GENFLEET_DATA_DIR {base}"
        )
    return folder


def _digits() -> tuple[Tensor, Tensor, int]:
    """scikit-learn's bundled 8x8 digits: 1797 images of 17 grey levels, no download.

    Read from the CSV that scikit-learn ships, as `load_digits` does, but without importing
    scikit-learn: that import (2 s) would delay every Ray Train worker's first step.
    """
    try:
        rows = _read_digits_csv()  # (N, 65): 64 pixels, then the label
    except FileNotFoundError:  # a scikit-learn that keeps the file elsewhere
        from sklearn.datasets import load_digits

        bunch = load_digits()
        rows = np.concatenate([bunch.data, bunch.target[:, None]], axis=1)
    images = torch.from_numpy(rows[:, :64]).round().to(torch.uint8).view(-1, 1, 8, 8)
    return images, torch.from_numpy(rows[:, 64]).long(), 17


def _read_digits_csv() -> np.ndarray:
    sklearn = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if sklearn is None or sklearn.origin is None:
        raise FileNotFoundError("scikit-learn is not installed")
    with gzip.open(Path(sklearn.origin).parent / DIGITS_CSV, "rt") as csv:
        return np.loadtxt(csv, delimiter=",")


def _torchvision_train_set(data: DataSpec, folder: Path) -> tuple[Tensor, Tensor]:
    from torchvision import datasets

    classes = {
        "mnist": datasets.MNIST,
        "binarized_mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }
    try:
        source = classes[data.dataset](str(folder), train=True, download=data.download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DatasetError(_missing_data_message(data, folder, exc)) from exc
    labels = torch.as_tensor(source.targets).long()
    pixels = torch.as_tensor(source.data).to(torch.uint8)
    if pixels.dim() == 3:  # MNIST-like (N, 28, 28)
        return pixels.unsqueeze(1), labels
    images = pixels.permute(0, 3, 1, 2).contiguous()  # CIFAR-10 (N, 32, 32, 3) -> (N, 3, 32, 32)
    return images, labels


def _missing_data_message(data: DataSpec, folder: Path, exc: Exception) -> str:
    expected = TORCHVISION_FILES[data.dataset]
    if data.download:
        return f"{data.dataset}: could not download into {folder} (expected {expected}): {exc}"
    return (
        f"{data.dataset}: no data in {folder} (expected {expected}); set data.download: true "
        f"on a machine with internet, or copy the files there (torchvision said: {exc})"
    )


def read_image_folder(folder: Path, size: int, grayscale: bool) -> tuple[Tensor, Tensor]:
    """Every image under `folder`, resized and centre-cropped to size x size, as 256 levels.

    Labels are the first-level sub-folder names in sorted order; images directly in `folder`
    form one class of their own.
    """
    files = list_image_files(folder)
    if not files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise DatasetError(
            f"image_folder: no images in {folder} (expected files ending {suffixes})"
        )
    class_of = {path: _class_name(folder, path) for path in files}
    class_names = sorted(set(class_of.values()))
    images = torch.stack([read_image(path, size, grayscale) for path in files])
    labels = torch.tensor([class_names.index(class_of[path]) for path in files])
    return images, labels


def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder` in sorted order, refusing any symlink that points outside."""
    if not folder.is_dir():
        raise DatasetError(f"image_folder: {folder} is not a folder")
    found = []
    for parent, _, names in os.walk(folder):  # does not descend into symlinked folders
        for name in names:
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.resolve().is_relative_to(folder):
                raise DatasetError(f"image_folder: {path} links outside {folder}")
            found.append(path)
    return sorted(found)


def read_image(path: Path, size: int, grayscale: bool) -> Tensor:
    """One image file as (C, size, size) uint8: scaled so the short side fits, centre-cropped."""
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if grayscale else "RGB")
            fitted = ImageOps.fit(converted, (size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image_folder: cannot read image {path}: {exc}") from exc
    pixels = torch.from_numpy(np.array(fitted, dtype=np.uint8))  # (H, W) or (H, W, 3)
    return pixels.unsqueeze(0) if grayscale else pixels.permute(2, 0, 1)


def _class_name(folder: Path, path: Path) -> str:
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else ""
