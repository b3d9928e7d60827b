"""Optimizers, learning-rate schedules and the weight EMA the training loop builds from a spec."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from jobs.spec import TrainSpec
from trainers.generative_model import GenerativeModel

SGD_MOMENTUM = 0.9  # the spec has no momentum field; plain SGD is too slow to be a useful choice


def build_optimizer(
    params: Iterator[nn.Parameter], train: TrainSpec, betas: tuple[float, float]
) -> Optimizer:
    """`betas` (the model's `adam_betas`) apply to Adam and AdamW only."""
    if train.optimizer == "sgd":
        return SGD(params, lr=train.lr, momentum=SGD_MOMENTUM, weight_decay=train.weight_decay)
    adam = Adam if train.optimizer == "adam" else AdamW
    return adam(params, lr=train.lr, weight_decay=train.weight_decay, betas=betas)


def build_schedule(optimizer: Optimizer, train: TrainSpec, total_steps: int) -> LambdaLR:
    """Stepped once per batch: a linear warm-up from lr / warmup_steps to lr, then constant,
    exponential (lr_decay every step) or cosine, which reaches 0 at the last step.

    The warm-up is clamped to `total_steps` (a run shorter than its warm-up only warms up), so a
    recipe's warm-up never makes a short run fail. A LambdaLR keeps only the step count in its
    state_dict, which is all a resumed run needs.
    """
    warmup = min(train.warmup_steps, total_steps)
    decay_steps = max(1, total_steps - warmup)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        after_warmup = step - warmup
        if train.lr_schedule == "cosine":
            progress = min(after_warmup, decay_steps) / decay_steps
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if train.lr_schedule == "exponential":
            return train.lr_decay**after_warmup
        return 1.0

    return LambdaLR(optimizer, lr_factor)


class WeightEMA:
    """An exponential moving average of the weights (Polyak averaging, as PixelCNN++ section 3
    evaluates with); buffers such as batch-norm statistics are copied, not averaged.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (the `num_updates`
    option of TensorFlow's ExponentialMovingAverage): with 0.999 from the first step, a
    200-step run would evaluate weights that are still 82% the random initialisation.
    """

    def __init__(self, model: GenerativeModel, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: GenerativeModel) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, live in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(live, 1.0 - decay)
        for average, live in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(live)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
