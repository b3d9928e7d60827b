"""Learning-rate schedules: a linear warm-up, then constant, cosine to 0 or exponential decay."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from jobs.spec import TrainSpec
from trainers.optim import build_schedule

LR = 0.1


def lr_per_step(total_steps: int, **train: Any) -> list[float]:
    """The rate each of `total_steps` optimizer steps uses, then the rate after the last one."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = build_schedule(optimizer, TrainSpec(lr=LR, **train), total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return [*rates, optimizer.param_groups[0]["lr"]]


def test_warmup_rises_linearly_then_cosine_reaches_zero_at_the_last_step() -> None:
    rates = lr_per_step(24, warmup_steps=4, lr_schedule="cosine")
    assert rates[:5] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR, LR])
    assert rates[4 + 10] == pytest.approx(LR / 2)  # halfway through the 20 decay steps
    assert rates[23] == pytest.approx(LR * (1 + math.cos(math.pi * 19 / 20)) / 2)
    assert rates[24] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_holds_the_rate_after_its_warmup() -> None:
    assert lr_per_step(6, warmup_steps=2) == pytest.approx([LR / 2] + [LR] * 6)


def test_exponential_decay_starts_when_the_warmup_ends() -> None:
    rates = lr_per_step(6, warmup_steps=2, lr_schedule="exponential", lr_decay=0.5)
    assert rates == pytest.approx([LR / 2, LR, LR, LR / 2, LR / 4, LR / 8, LR / 16])


def test_no_warmup_starts_at_the_full_rate() -> None:
    assert lr_per_step(4, lr_schedule="cosine")[0] == LR


def test_a_warmup_longer_than_the_run_is_clamped_to_it() -> None:
    """A recipe's warm-up must not break a short run: 50 warm-up steps in a 5-step run."""
    assert lr_per_step(5, warmup_steps=50, lr_schedule="cosine") == pytest.approx(
        [LR / 5, 2 * LR / 5, 3 * LR / 5, 4 * LR / 5, LR, LR]
    )
