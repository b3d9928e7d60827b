"""Splits served as whole indexed batches: one index tensor per epoch, one gather per step.

Every split is a tensor in memory (trainers/splits.py), so a DataLoader's per-item
`__getitem__` and default collation (a batch of small tensors stacked every step) cost more
than the gather they build (genfleet issue 14: at most 5% of a step goes to data). An epoch is
one index tensor, on the split's device, cut into slices; a batch is `split.batch(slice)`.
A split small enough (DEVICE_RESIDENT_BYTES) is copied to the accelerator once, so its batches
never cross the bus.

Train order is DistributedSampler's (shuffle=True, drop_last=False) item for item: a
`torch.randperm` seeded `seed + epoch`, padded with its own first items to a multiple of the
world size, rank r taking every world_size-th item from r. Runs from before this module keep
their curves, and resuming needs no sampler state. Evaluation serves every image exactly once
over all ranks, in order, last batch kept: likelihood sums must be exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from trainers.splits import LevelImages

# A split up to this size lives on the accelerator for the whole run: MNIST's train split is
# 47 MB, CIFAR-10's 138 MB; a large image folder stays on the host and travels per batch.
DEVICE_RESIDENT_BYTES = 1 << 30


def resident(split: LevelImages, device: torch.device) -> LevelImages:
    """`split` on `device` when it fits there, else where it is."""
    if split.device == device or split.nbytes > DEVICE_RESIDENT_BYTES:
        return split
    return split.to(device)


def gathered(split: LevelImages, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """`split`'s items in `order`, `batch_size` at a time (the last batch may be smaller)."""
    for start in range(0, len(order), batch_size):
        yield split.batch(order[start : start + batch_size])


class TrainBatches:
    """One rank's shuffled training batches, epoch after epoch."""

    def __init__(
        self,
        split: LevelImages,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = resident(split, device)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(len(split) / world_size)
        # A 1-image last batch breaks batch norm and adds a noisy step: drop it when possible.
        self.drop_last = self.per_rank > batch_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """This rank's items of `epoch` (per_rank,), in the order it trains on them."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        shuffled = torch.randperm(len(self.split), generator=generator)
        total = self.per_rank * self.world_size
        padded = shuffled.repeat(math.ceil(total / len(shuffled)))[:total]
        return padded[self.rank :: self.world_size]

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of training epoch `epoch`: (images (B, C, H, W) int64, labels (B,))."""
        self.split.set_epoch(epoch)  # dynamic binarization redraws its pixels
        order = self.order(epoch)[: len(self) * self.batch_size].to(self.split.device)
        return gathered(self.split, order, self.batch_size)


class EvaluationBatches:
    """Every image of `split` exactly once over all ranks (DistributedSampler would pad with
    repeats), in order, last batch kept."""

    def __init__(
        self,
        split: LevelImages,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split = resident(split, device)
        self.batch_size = batch_size
        self.order = torch.arange(rank, len(split), world_size, device=self.split.device)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return gathered(self.split, self.order, self.batch_size)
