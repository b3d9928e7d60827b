"""Splits in memory: whole-batch gathers equal item reads, and dynamic binarization is
Bernoulli(intensity / 255) per pixel, a function of (seed, epoch, item) alone."""

from __future__ import annotations

import pytest
import torch

from trainers.splits import DynamicallyBinarized, LevelImages, binarize_epoch


def intensities_of(values: list[int], repeat: int) -> torch.Tensor:
    """One image per value, (len(values), 1, repeat, 1) uint8, every pixel at that value."""
    column = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1)
    return column.expand(-1, 1, repeat, 1).contiguous()


def test_a_batch_gather_equals_the_items_read_one_by_one() -> None:
    images = torch.randint(0, 256, (9, 3, 4, 4), dtype=torch.uint8)
    split = LevelImages(images, torch.arange(9) % 4)
    index = torch.tensor([7, 0, 7, 3])
    batch_images, batch_labels = split.batch(index)
    assert torch.equal(batch_images, torch.stack([split[i][0] for i in index.tolist()]))
    assert torch.equal(batch_labels, torch.tensor([3, 0, 3, 3]))
    assert batch_images.dtype == torch.int64


def test_binarization_fires_with_probability_intensity_over_255() -> None:
    pixels = binarize_epoch(intensities_of([0, 255, 51], 20_000), seed=0, epoch=1)
    assert pixels[0].sum() == 0
    assert pixels[1].sum() == 20_000
    assert pixels[2].float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert set(pixels.unique().tolist()) == {0, 1}


def test_an_items_draw_depends_on_seed_epoch_and_item_alone() -> None:
    intensities = intensities_of([128] * 6, 50)
    split = DynamicallyBinarized(intensities, torch.arange(6), seed=5)
    split.set_epoch(3)
    replay = DynamicallyBinarized(intensities, torch.arange(6), seed=5, epoch=3)
    index = torch.tensor([4, 1, 5])
    assert torch.equal(split.batch(index)[0], replay.batch(index.flip(0))[0].flip(0))
    assert torch.equal(split.batch(index)[0][0], split[4][0])
    assert torch.equal(split.to(torch.device("cpu")).images, replay.images)
    other_epoch = DynamicallyBinarized(intensities, torch.arange(6), seed=5, epoch=4)
    other_seed = DynamicallyBinarized(intensities, torch.arange(6), seed=6, epoch=3)
    assert not torch.equal(split.images, other_epoch.images)
    assert not torch.equal(split.images, other_seed.images)
