"""One split of a dataset held in memory, as the training loop reads it (genfleet issue 14).

Images are stored as uint8 levels (N, C, H, W) beside int64 labels (N,) and served as int64
levels. `batch(index)` gathers a whole batch in one indexing op, on whatever device the split
lives on (trainers/batches.py moves small splits to the accelerator once); `split[i]` serves
one item for code that wants a few. Nothing here needs more than torch, so a bench can serve
batches on a machine without the job spec's dependencies.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Self

import torch
from torch import Tensor
from torch.utils.data import Dataset

# Bernoulli(k / 255) for an integer intensity k is exactly "a uniform integer in [0, 255) is
# below k": 0 never fires, 255 always does, as with a float uniform < k / 255.
INTENSITY_DRAWS = 255


class LevelImages(Dataset[tuple[Tensor, Tensor]]):
    """Fixed images: the same every epoch."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images  # (N, C, H, W) uint8 levels
        self.labels = labels  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """One item: ((C, H, W) int64 levels, its label)."""
        return self.batch(index)

    def batch(self, index: Tensor | int) -> tuple[Tensor, Tensor]:
        """Items `index` (B,), on the split's device, as ((B, C, H, W) int64, (B,) int64)."""
        return self.images[index].long(), self.labels[index]

    def set_epoch(self, epoch: int) -> None:
        """Training epoch `epoch` starts; a split whose images depend on it redraws them."""
        del epoch

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def to(self, device: torch.device) -> Self:
        moved = copy.copy(self)
        moved.images, moved.labels = self.images.to(device), self.labels.to(device)
        return moved


class DynamicallyBinarized(LevelImages):
    """Each pixel ~ Bernoulli(intensity / 255), redrawn every epoch (Salakhutdinov & Murray 2008
    fixed one binarization; dynamic binarization as in Burda et al. 2016 regularises better).

    A whole epoch is drawn at once from a generator seeded by (seed, epoch) alone, so item i's
    binary image depends only on (seed, epoch, i): every rank, every device and a resumed run
    see the same one, whatever order batches visit items in.
    """

    def __init__(self, intensities: Tensor, labels: Tensor, seed: int, epoch: int = 0) -> None:
        self.intensities = intensities  # (N, 1, H, W) uint8 in [0, 255]
        self.seed = seed
        super().__init__(binarize_epoch(intensities, seed, epoch), labels)
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.images = binarize_epoch(self.intensities, self.seed, epoch)
            self.epoch = epoch

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.intensities.nbytes

    def to(self, device: torch.device) -> Self:
        moved = super().to(device)
        moved.intensities = self.intensities.to(device)
        return moved


def binarize_epoch(intensities: Tensor, seed: int, epoch: int) -> Tensor:
    """One Bernoulli(intensity / 255) draw per pixel of every image, as uint8 levels {0, 1}.

    Drawn on the CPU, whatever device `intensities` is on: the images must not depend on it.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    draws = torch.randint(
        INTENSITY_DRAWS, intensities.shape, generator=generator, dtype=torch.uint8
    )
    return (draws.to(intensities.device) < intensities).to(torch.uint8)


def epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed for (seed, epoch), unrelated to the `seed + epoch` that shuffles the
    same epoch's order (a shared seed would correlate an item's place with its pixels)."""
    digest = hashlib.blake2b(f"binarize:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
