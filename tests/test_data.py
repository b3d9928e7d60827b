"""Datasets: deterministic splits, integer levels, clear errors for missing or unsafe data."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.spec import DATASETS_WITH_TEST_SPLIT, DataSpec
from trainers import data as data_module
from trainers.data import (
    BINARIZED_TEST_SEED,
    OFFICIAL_TEST_SPLITS,
    TEST_SPLIT_SEED,
    DatasetError,
    DynamicallyBinarized,
    binarize,
    load_dataset,
    split_indices,
)


def images_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def labels_of(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


def write_fake_mnist(
    raw: Path, intensities: np.ndarray, labels: np.ndarray, test: np.ndarray | None = None
) -> None:
    """The four idx files torchvision's MNIST reads, in its big-endian raw format; t10k holds
    `test` (and the first labels), or the same images as train."""
    raw.mkdir(parents=True)
    for split, pixels in (("train", intensities), ("t10k", intensities if test is None else test)):
        count, height, width = pixels.shape
        split_labels = labels[:count]
        header = struct.pack(">iiii", 0x803, count, height, width)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
        label_header = struct.pack(">ii", 0x801, count)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            label_header + split_labels.astype(np.uint8).tobytes()
        )


def test_digits_are_scikit_learns_read_without_importing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    expected_images = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)
    expected_labels = torch.from_numpy(bunch.target).long()
    digits = data_module._digits()
    assert torch.equal(digits.images, expected_images)
    assert torch.equal(digits.labels, expected_labels)
    # Where a scikit-learn release moved its CSV, load_digits itself gives the same tensors.
    monkeypatch.setattr(data_module, "DIGITS_CSV", Path("no", "such", "digits.csv.gz"))
    digits = data_module._digits()
    assert torch.equal(digits.images, expected_images)
    assert torch.equal(digits.labels, expected_labels)


def test_digits_split_is_deterministic_disjoint_and_in_17_levels(tmp_path: Path) -> None:
    data = DataSpec(dataset="digits", val_fraction=0.1)
    first = load_dataset(data, tmp_path, seed=3)
    again = load_dataset(data, tmp_path, seed=3)
    other = load_dataset(data, tmp_path, seed=4)

    assert (len(first.train), len(first.val), len(first.test)) == (1455, 162, 180)
    assert (first.shape.channels, first.shape.height, first.shape.width) == (1, 8, 8)
    assert (first.shape.levels, first.num_classes, first.binarization) == (17, 10, "none")
    image, label = first.train[0]
    assert image.dtype == torch.int64 and image.shape == (1, 8, 8)
    assert label.dtype == torch.int64
    val_images = images_of(first.val)
    assert int(val_images.min()) == 0 and int(val_images.max()) == 16
    assert torch.equal(val_images, images_of(again.val))
    assert torch.equal(labels_of(first.val), labels_of(again.val))
    assert not torch.equal(val_images, images_of(other.val))


def test_digits_test_split_is_fixed_whatever_the_train_seed_and_disjoint(tmp_path: Path) -> None:
    data = DataSpec(dataset="digits")
    splits = [load_dataset(data, tmp_path, seed=seed) for seed in (0, 1, 2)]

    tests = [images_of(split.test) for split in splits]
    assert all(torch.equal(tests[0], other) for other in tests[1:])
    assert splits[0].test_split == f"held out: 0.1 of the images, drawn with seed {TEST_SPLIT_SEED}"
    # Every digit lands in exactly one split: flattened images as rows, compared as sets.
    everything = data_module._digits().images.flatten(1)
    rows = {tuple(row.tolist()) for row in everything}
    seen = torch.cat([images_of(s) for s in (splits[0].train, splits[0].val, splits[0].test)])
    assert len(seen) == len(everything) == 1797
    assert {tuple(row.tolist()) for row in seen.flatten(1)} == rows
    assert not torch.equal(images_of(splits[0].val), images_of(splits[1].val))


def test_test_fraction_sets_the_held_out_share(tmp_path: Path) -> None:
    datasets = load_dataset(DataSpec(dataset="digits", test_fraction=0.25), tmp_path, seed=0)
    assert len(datasets.test) == round(1797 * 0.25)
    assert "0.25 of the images" in datasets.test_split


def test_every_dataset_with_an_official_test_split_names_it() -> None:
    assert set(OFFICIAL_TEST_SPLITS) == set(DATASETS_WITH_TEST_SPLIT)


def test_mnist_tests_on_the_t10k_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 128, size=(20, 28, 28), dtype=np.uint8)
    t10k = rng.integers(128, 256, size=(6, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path / "mnist" / "MNIST" / "raw", train, np.arange(20) % 10, t10k)

    datasets = load_dataset(DataSpec(dataset="mnist", val_fraction=0.25), tmp_path, seed=0)

    assert (len(datasets.train), len(datasets.val), len(datasets.test)) == (15, 5, 6)
    assert torch.equal(images_of(datasets.test), torch.from_numpy(t10k).long().unsqueeze(1))
    assert torch.equal(labels_of(datasets.test), torch.arange(6))
    assert datasets.test_split == "official t10k"


def test_binarized_mnist_test_set_is_binarized_once_from_its_documented_seed(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    t10k = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path / "mnist" / "MNIST" / "raw", train, np.arange(10), t10k)
    data = DataSpec(dataset="binarized_mnist")

    first, other_seed = (load_dataset(data, tmp_path, seed) for seed in (0, 7))

    expected = torch.stack(
        [
            binarize(torch.from_numpy(t10k[i]).unsqueeze(0), BINARIZED_TEST_SEED, 0, i)
            for i in range(4)
        ]
    )
    assert torch.equal(images_of(first.test), expected)
    assert torch.equal(images_of(other_seed.test), expected)
    assert f"binarized once with seed {BINARIZED_TEST_SEED}" in first.test_split


def test_split_indices_cover_every_item_once() -> None:
    train, val = split_indices(101, 0.25, seed=7)
    assert len(val) == 25
    assert sorted(train.tolist() + val.tolist()) == list(range(101))
    assert torch.equal(val, split_indices(101, 0.25, seed=7)[1])


def test_offline_mnist_without_files_names_the_folder_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(DataSpec(dataset="mnist"), tmp_path, seed=0)
    message = str(error.value)
    assert str(tmp_path / "mnist") in message
    assert "MNIST/raw/train-images-idx3-ubyte" in message
    assert "data.download: true" in message


def test_mnist_reads_torchvision_raw_files_as_256_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    intensities = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path / "mnist" / "MNIST" / "raw", intensities, np.arange(20) % 10)

    datasets = load_dataset(DataSpec(dataset="mnist", val_fraction=0.25), tmp_path, seed=0)

    assert (len(datasets.train), len(datasets.val)) == (15, 5)
    assert (datasets.shape.levels, datasets.shape.dims, datasets.num_classes) == (256, 784, 10)
    all_images = torch.cat([images_of(datasets.train), images_of(datasets.val)])
    assert sorted(all_images.sum(dim=(1, 2, 3)).tolist()) == sorted(
        torch.from_numpy(intensities).long().sum(dim=(1, 2)).tolist()
    )


def test_binarized_mnist_redraws_each_epoch_and_repeats_per_seed_and_epoch(
    tmp_path: Path,
) -> None:
    intensities = np.full((40, 28, 28), 128, dtype=np.uint8)
    write_fake_mnist(tmp_path / "mnist" / "MNIST" / "raw", intensities, np.arange(40) % 10)
    data = DataSpec(dataset="binarized_mnist", val_fraction=0.1)

    datasets = load_dataset(data, tmp_path, seed=5)
    train = datasets.train
    assert isinstance(train, DynamicallyBinarized)
    assert (datasets.shape.levels, datasets.binarization) == (2, "dynamic")
    train.set_epoch(1)
    epoch_one = images_of(train)
    train.set_epoch(2)
    epoch_two = images_of(train)
    replay = load_dataset(data, tmp_path, seed=5).train
    replay.set_epoch(1)

    assert set(epoch_one.unique().tolist()) == {0, 1}
    assert not torch.equal(epoch_one, epoch_two)
    assert torch.equal(epoch_one, images_of(replay))
    assert torch.equal(images_of(datasets.val), images_of(load_dataset(data, tmp_path, 5).val))


def test_binarize_draws_each_pixel_with_probability_intensity_over_255() -> None:
    intensities = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat_interleave(20000)
    pixels = binarize(intensities, seed=0, epoch=1, index=0)
    assert pixels[:20000].sum() == 0
    assert pixels[20000:40000].sum() == 20000
    assert pixels[40000:].float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.equal(pixels, binarize(intensities, seed=0, epoch=1, index=0))
    assert not torch.equal(pixels, binarize(intensities, seed=0, epoch=2, index=0))


def save_striped_png(path: Path, width: int, height: int) -> None:
    """Red left third, green middle third, blue right third."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    pixels[:, :third, 0] = 255
    pixels[:, third : 2 * third, 1] = 255
    pixels[:, 2 * third :, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_resizes_centre_crops_and_labels_by_sub_folder(tmp_path: Path) -> None:
    for name in ("cats/a.png", "cats/b.PNG", "dogs/c.png", "dogs/deep/d.png"):
        save_striped_png(tmp_path / "pets" / name, width=30, height=10)
    (tmp_path / "pets" / "notes.txt").write_text("not an image")
    data = DataSpec(dataset="image_folder", root="pets", image_size=8, val_fraction=0.25)

    datasets = load_dataset(data, tmp_path, seed=0)
    splits = (datasets.train, datasets.val, datasets.test)
    images = torch.cat([images_of(split) for split in splits])
    labels = torch.cat([labels_of(split) for split in splits])

    assert images.shape == (4, 3, 8, 8)
    assert (datasets.shape.levels, datasets.num_classes) == (256, 2)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    # Scaled to 24x8, the centre 8 columns are the green stripe.
    assert (images[:, 1] > 200).all() and (images[:, 0] < 60).all() and (images[:, 2] < 60).all()

    gray = load_dataset(data.model_copy(update={"grayscale": True}), tmp_path, seed=0)
    assert gray.shape.channels == 1 and gray.train[0][0].shape == (1, 8, 8)


def test_image_folder_too_small_for_three_splits_says_so(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        save_striped_png(tmp_path / "pets" / name, width=12, height=12)
    data = DataSpec(dataset="image_folder", root="pets", image_size=8)
    with pytest.raises(
        DatasetError, match="image_folder: 1 images beside 1 test images are too few"
    ):
        load_dataset(data, tmp_path, seed=0)


def test_image_folder_names_a_corrupt_file(tmp_path: Path) -> None:
    save_striped_png(tmp_path / "pets" / "good.png", 12, 12)
    corrupt = tmp_path / "pets" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    data = DataSpec(dataset="image_folder", root="pets", image_size=8)
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        load_dataset(data, tmp_path, seed=0)


def test_image_folder_without_images_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    data = DataSpec(dataset="image_folder", root="empty")
    with pytest.raises(DatasetError, match=r"no images in .*empty \(expected files ending .png"):
        load_dataset(data, tmp_path, seed=0)


def test_root_that_symlinks_outside_the_data_dir_is_rejected(tmp_path: Path) -> None:
    data_dir, outside = tmp_path / "data", tmp_path / "outside"
    save_striped_png(outside / "x.png", 12, 12)
    data_dir.mkdir()
    (data_dir / "escape").symlink_to(outside)
    data = DataSpec(dataset="image_folder", root="escape")
    with pytest.raises(DatasetError, match="outside GENFLEET_DATA_DIR"):
        load_dataset(data, data_dir, seed=0)


def test_image_file_that_symlinks_outside_is_rejected(tmp_path: Path) -> None:
    save_striped_png(tmp_path / "outside" / "secret.png", 12, 12)
    save_striped_png(tmp_path / "data" / "pets" / "ok.png", 12, 12)
    (tmp_path / "data" / "pets" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    data = DataSpec(dataset="image_folder", root="pets", image_size=8)
    with pytest.raises(DatasetError, match=r"link.png links outside"):
        load_dataset(data, tmp_path / "data", seed=0)
