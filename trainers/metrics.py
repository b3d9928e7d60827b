"""Exact metric sums over a DDP world: add per-image terms, all-reduce, divide once."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from trainers.generative_model import nats_to_bits_per_dim


class MetricSums:
    """Sums of per-image terms (float64) and their image counts, all-reduced before dividing once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, Tensor], prefix: str) -> None:
        for key, value in terms.items():
            name = prefix + key
            total = value.detach().double().sum()
            self.sums[name] = self.sums[name] + total if name in self.sums else total
            self.counts[name] = self.counts.get(name, 0) + value.numel()

    def reduce_means(self) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[name] for name in names]).to(self.device)  # (K,)
        counts = torch.tensor([float(self.counts[name]) for name in names], dtype=torch.float64)
        totals = all_reduce_sum(torch.cat([sums, counts.to(self.device)])).cpu()  # (2K,)
        return {name: (totals[i] / totals[len(names) + i]).item() for i, name in enumerate(names)}


def with_bits_per_dim(means: dict[str, float], prefix: str, dims: int) -> dict[str, float]:
    """Add bits/dim beside each `<prefix><term>_nats`; `nll_nats` gives `<prefix>bits_per_dim`."""
    bits = {}
    for name, value in means.items():
        if name.endswith("_nats"):
            term = name.removeprefix(prefix).removesuffix("_nats")
            bits_name = f"{prefix}bits_per_dim" if term == "nll" else f"{prefix}{term}_bits_per_dim"
            bits[bits_name] = float(nats_to_bits_per_dim(value, dims))
    return {**means, **bits}


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_from_ranks(value: Any) -> list[Any]:
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
