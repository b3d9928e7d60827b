"""Datasets as integer levels, in train, val and test splits (genfleet issues 3 and 13).

Test is what a paper's table reports: the official test split where the dataset has one
(MNIST's and Fashion-MNIST's t10k files, CIFAR-10's test_batch), else a split held out by the
fixed `TEST_SPLIT_SEED`, so every trial of a sweep over `train.seed` is tested on the same
images. Val, the selection split, is carved from the rest by `train.seed`.

Every split is a tensor in memory (trainers/splits.py) that serves `(images (B, C, H, W) int64
levels, labels (B,) int64)` a whole batch at a time. Files live under GENFLEET_DATA_DIR;
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

from jobs.failures import NotRetryable
from jobs.spec import DataSpec, Split
from trainers.generative_model import ImageShape
from trainers.splits import DynamicallyBinarized, LevelImages

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# binarized_mnist is binarized from the MNIST files, so both share one download folder.
DEFAULT_FOLDERS = {"binarized_mnist": "mnist"}
DIGITS_CSV = Path("datasets", "data", "digits.csv.gz")  # inside scikit-learn's package

# Held-out test splits (digits, image_folder) are drawn from this seed, never from train.seed.
TEST_SPLIT_SEED = 20_170_119
# Binarized MNIST's t10k images are binarized once, from this seed (epoch 0, item index), as
# Salakhutdinov & Murray 2008 fixed one binarization for evaluation; train redraws every epoch.
BINARIZED_TEST_SEED = 8_675_309
# The official test split's name per dataset, as the run info reports it.
OFFICIAL_TEST_SPLITS = {
    "mnist": "official t10k",
    "binarized_mnist": f"official t10k, binarized once with seed {BINARIZED_TEST_SEED}",
    "fashion_mnist": "official t10k",
    "cifar10": "official test_batch",
}
DATASET_LEVELS = {"digits": 17, "binarized_mnist": 2}  # every other dataset has 256
DEFAULT_TEST_FRACTION = 0.1  # of digits and image_folder, when data.test_fraction is unset

# What torchvision needs on disk, named in the error a user sees when it is missing.
TORCHVISION_FILES = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta",
}
TORCHVISION_FILES["binarized_mnist"] = TORCHVISION_FILES["mnist"]


class DatasetError(NotRetryable):
    """Data cannot be loaded; the message names the folder or file and what was expected."""


def binarize(intensities: Tensor, seed: int, epoch: int, index: int) -> Tensor:
    """One Bernoulli draw per pixel with p = intensity / 255, as int64 levels {0, 1}: how val
    and test are binarized once (train redraws whole epochs, trainers/splits.py)."""
    uniform = np.random.default_rng([seed, epoch, index]).random(tuple(intensities.shape))
    return torch.from_numpy(uniform < intensities.numpy() / 255.0).long()


@dataclass(frozen=True)
class Datasets:
    train: LevelImages
    val: LevelImages
    test: LevelImages
    shape: ImageShape
    num_classes: int
    binarization: Literal["dynamic", "none"]
    test_split: str  # where test comes from, as the run info reports it

    def split(self, name: Split) -> LevelImages:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass(frozen=True)
class LabelledImages:
    images: Tensor  # (N, C, H, W) uint8 levels (binarized MNIST: 0-255 intensities)
    labels: Tensor  # (N,) int64


def load_dataset(data: DataSpec, settings_data_dir: Path, seed: int) -> Datasets:
    """Train, val and test sets of `data.dataset`; val is `data.val_fraction` of the non-test
    images, drawn by `seed`."""
    files, test, test_split = _files_and_test_split(data, settings_data_dir)
    levels = DATASET_LEVELS.get(data.dataset, 256)
    if len(files.images) < 2 or len(test.images) < 1:
        raise DatasetError(
            f"{data.dataset}: {len(files.images)} images beside {len(test.images)} test images "
            "are too few: train and val need at least one each, and test one more"
        )
    train_index, val_index = split_indices(len(files.images), data.val_fraction, seed)
    num_classes = int(torch.cat([files.labels, test.labels]).max()) + 1
    images = files.images
    shape = ImageShape(images.shape[1], images.shape[2], images.shape[3], levels)
    if data.dataset != "binarized_mnist":
        return Datasets(
            train=LevelImages(images[train_index], files.labels[train_index]),
            val=LevelImages(images[val_index], files.labels[val_index]),
            test=LevelImages(test.images, test.labels),
            shape=shape,
            num_classes=num_classes,
            binarization="none",
            test_split=test_split,
        )
    # Val and test are binarized once, val from the seed, so their numbers compare across
    # epochs; test from BINARIZED_TEST_SEED, so they compare across runs too.
    return Datasets(
        train=DynamicallyBinarized(images[train_index], files.labels[train_index], seed),
        val=LevelImages(binarized_once(images, val_index, seed), files.labels[val_index]),
        test=LevelImages(
            binarized_once(test.images, torch.arange(len(test.images)), BINARIZED_TEST_SEED),
            test.labels,
        ),
        shape=shape,
        num_classes=num_classes,
        binarization="dynamic",
        test_split=test_split,
    )


def binarized_once(intensities: Tensor, index: Tensor, seed: int) -> Tensor:
    """One fixed binarization (epoch 0) of `intensities[index]`, as uint8 levels {0, 1}."""
    draws = [binarize(intensities[i], seed, 0, int(i)) for i in index]
    return torch.stack(draws).to(torch.uint8)


def _files_and_test_split(
    data: DataSpec, data_dir: Path
) -> tuple[LabelledImages, LabelledImages, str]:
    """(images train and val come from, test images, where test came from)."""
    if data.dataset in OFFICIAL_TEST_SPLITS:
        folder = dataset_folder(data, data_dir)
        train_files = _torchvision_split(data, folder, train=True)
        test_files = _torchvision_split(data, folder, train=False)
        return train_files, test_files, OFFICIAL_TEST_SPLITS[data.dataset]
    if data.dataset == "digits":
        every = _digits()
    else:
        every = LabelledImages(
            *read_image_folder(dataset_folder(data, data_dir), data.image_size, data.grayscale)
        )
    fraction = data.test_fraction or DEFAULT_TEST_FRACTION
    rest, test = split_indices(len(every.images), fraction, TEST_SPLIT_SEED)
    described = f"held out: {fraction:g} of the images, drawn with seed {TEST_SPLIT_SEED}"
    return (
        LabelledImages(every.images[rest], every.labels[rest]),
        LabelledImages(every.images[test], every.labels[test]),
        described,
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


def _digits() -> LabelledImages:
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
    return LabelledImages(images, torch.from_numpy(rows[:, 64]).long())


def _read_digits_csv() -> np.ndarray:
    sklearn = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if sklearn is None or sklearn.origin is None:
        raise FileNotFoundError("scikit-learn is not installed")
    with gzip.open(Path(sklearn.origin).parent / DIGITS_CSV, "rt") as csv:
        return np.loadtxt(csv, delimiter=",")


def _torchvision_split(data: DataSpec, folder: Path, train: bool) -> LabelledImages:
    from torchvision import datasets

    classes = {
        "mnist": datasets.MNIST,
        "binarized_mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }
    try:
        source = classes[data.dataset](str(folder), train=train, download=data.download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DatasetError(_missing_data_message(data, folder, exc)) from exc
    labels = torch.as_tensor(source.targets).long()
    pixels = torch.as_tensor(source.data).to(torch.uint8)
    if pixels.dim() == 3:  # MNIST-like (N, 28, 28)
        return LabelledImages(pixels.unsqueeze(1), labels)
    images = pixels.permute(0, 3, 1, 2).contiguous()  # CIFAR-10 (N, 32, 32, 3) -> (N, 3, 32, 32)
    return LabelledImages(images, labels)


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
