"""Indexed batches serve what the DataLoaders they replaced served, batch for batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from trainers import batches as batches_module
from trainers.batches import EvaluationBatches, TrainBatches, resident
from trainers.splits import LevelImages

CPU = torch.device("cpu")


def numbered_split(count: int) -> LevelImages:
    """Image i is filled with i % 256 and labelled i, so a batch names the items it holds."""
    images = (torch.arange(count) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return LevelImages(images.contiguous(), torch.arange(count))


def sampler_batches(
    split: LevelImages, batch_size: int, seed: int, epoch: int, rank: int, world: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What the loop's DistributedSampler + DataLoader served before trainers/batches.py."""
    sampler = DistributedSampler(split, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(split, batch_size, sampler=sampler, drop_last=len(sampler) > batch_size)
    return list(loader)


@pytest.mark.parametrize(
    ("count", "batch_size", "world"),
    [(1455, 64, 1), (1455, 64, 2), (100, 64, 3), (10, 64, 4), (3, 2, 5), (130, 13, 1)],
)
def test_train_batches_are_the_distributed_samplers_item_for_item(
    count: int, batch_size: int, world: int
) -> None:
    split = numbered_split(count)
    for rank in range(world):
        batches = TrainBatches(split, batch_size, seed=11, device=CPU, rank=rank, world_size=world)
        for epoch in (1, 2):
            expected = sampler_batches(split, batch_size, 11, epoch, rank, world)
            served = list(batches.epoch(epoch))
            assert len(batches) == len(expected) == len(served)
            for (images, labels), (old_images, old_labels) in zip(served, expected, strict=True):
                assert torch.equal(labels, old_labels)
                assert torch.equal(images, old_images) and images.dtype == torch.int64


def test_ranks_split_an_epoch_into_disjoint_shards_that_cover_every_item() -> None:
    split = numbered_split(1000)  # divisible by 4: no padding repeats
    shards = [
        torch.cat([labels for _, labels in TrainBatches(split, 10, 3, CPU, rank, 4).epoch(1)])
        for rank in range(4)
    ]
    assert sorted(torch.cat(shards).tolist()) == list(range(1000))


def test_evaluation_batches_are_every_item_once_in_order_with_the_last_batch_kept() -> None:
    split = numbered_split(23)
    for world in (1, 2, 3):
        for rank in range(world):
            expected = list(DataLoader(Subset(split, range(rank, 23, world)), 5, shuffle=False))
            served = list(EvaluationBatches(split, 5, CPU, rank, world))
            assert len(EvaluationBatches(split, 5, CPU, rank, world)) == len(expected)
            for (images, labels), (old_images, old_labels) in zip(served, expected, strict=True):
                assert torch.equal(labels, old_labels) and torch.equal(images, old_images)


def test_a_split_over_the_size_bound_stays_where_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    split = numbered_split(10)
    meta = torch.device("meta")  # stands in for an accelerator: moving to it is visible
    assert resident(split, meta).device == meta
    assert resident(split, CPU) is split
    monkeypatch.setattr(batches_module, "DEVICE_RESIDENT_BYTES", split.nbytes - 1)
    assert resident(split, meta) is split
