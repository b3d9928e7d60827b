"""What every model in the zoo is to the training loop, the samplers and the metrics.

Images travel as integer levels, `(B, C, H, W)` int64 in `[0, levels)`, so that every
likelihood is exact over the data's own discrete values (17 grey levels for `digits`, 256 for
MNIST/CIFAR-10, 2 for binarized MNIST). Models turn them into floats themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

# Only for annotations: a model reads its params' fields, so it builds from any object that has
# them where the job spec's pydantic is absent (bench/gpu_bench.py on a bare GPU machine).
if TYPE_CHECKING:
    from jobs.model_params import Params

Objective = Literal["exact_likelihood", "elbo", "reconstruction", "adversarial"]
TORCH_ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's and AdamW's own default


@dataclass(frozen=True)
class ImageShape:
    channels: int
    height: int
    width: int
    levels: int  # discrete values per sub-pixel

    @property
    def dims(self) -> int:
        """Sub-pixels per image: the denominator of bits/dim."""
        return self.channels * self.height * self.width


def to_unit_range(images: Tensor, levels: int) -> Tensor:
    """Integer levels (B, C, H, W) -> floats in [-1, 1], the range every model consumes."""
    return images.float() * (2.0 / (levels - 1)) - 1.0


def unit_range_to_levels(values: Tensor, levels: int) -> Tensor:
    """Floats in [-1, 1] -> nearest integer levels in [0, levels): inverse of to_unit_range."""
    scaled = (values + 1.0) * ((levels - 1) / 2.0)
    return scaled.round().clamp(0, levels - 1).long()


def nats_to_bits_per_dim(nats_per_image: Tensor | float, dims: int) -> Tensor | float:
    return nats_per_image / (dims * math.log(2.0))


class GenerativeModel(nn.Module):
    """Base of every model: one `forward` that returns per-image loss terms.

    The training loop calls the module (so DDP hooks run) once per phase and minimises the mean
    of `out["loss"]`. Likelihood models also return `nll_nats`: the exact negative
    log-likelihood of each image in nats, which the loop sums over the evaluation set and turns
    into bits/dim. Every other per-image term (keys ending in `_nats` are nats per image) is
    averaged over the evaluation set and reported as `val_<key>`.
    """

    name: ClassVar[str]  # the `model.type` job specs register it by
    objective: ClassVar[Objective]  # what its loss is, which picks the metrics the loop reports
    # One optimizer step per phase per batch, in this order; each phase's optimizer updates
    # `phase_parameters(phase)` (a GAN trains its discriminator, then its generator).
    phases: ClassVar[tuple[str, ...]] = ("train",)

    def __init__(self, params: Params, shape: ImageShape, num_classes: int) -> None:
        super().__init__()
        self.params = params
        self.shape = shape
        self.num_classes = num_classes

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def adam_betas(self) -> tuple[float, float]:
        """(beta1, beta2) of every phase's Adam or AdamW; torch's default unless a paper says
        otherwise (DCGAN's beta1 = 0.5)."""
        return TORCH_ADAM_BETAS

    def importance_samples(self, final: bool) -> int | None:
        """k of the importance-weighted bound `evaluate` reports as `nll_nats`, at the last
        evaluation when `final`; None for a model whose `nll_nats` is not such a bound."""
        del final
        return None

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        """Parameters the optimizer of `phase` updates (a GAN has one per network)."""
        del phase
        return self.parameters()

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor, final: bool = False) -> dict[str, Tensor]:
        """Per-image metrics over one evaluation batch; `final` asks for the costly ones."""
        del final
        out = self(images, labels)
        return {key: value.detach() for key, value in out.items()}

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """`len(labels)` new images (N, C, H, W) int64 levels, all randomness from `generator`."""
        raise NotImplementedError

    @torch.no_grad()
    def visuals(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Extra grids beside samples (reconstructions, interpolations, completions), as levels."""
        del images, labels, generator
        return {}
