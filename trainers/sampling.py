"""Autoregressive models and their naive pixel-by-pixel sampler.

All randomness is drawn up front as uniform noise, one slice per sub-pixel, so that any sampler
that follows the same raster order (the cached sampler in `cached_sampling.py`) turns the same
generator seed into the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from trainers.generative_model import GenerativeModel
from trainers.likelihood import sample_categorical


class AutoregressiveModel(GenerativeModel):
    """p(x) = prod_i p(x_i | x_<i) over pixels in raster order, channels R -> G -> B."""

    objective = "exact_likelihood"
    noise_per_subpixel: ClassVar[int] = 1  # uniforms each sub-pixel draw consumes

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        """Values (N, C) of pixel (row, col) given `images` filled in up to it (raster order).

        noise: (N, C, noise_per_subpixel) uniforms in [0, 1).
        """
        raise NotImplementedError

    def draw(
        self,
        labels: Tensor,
        generator: torch.Generator,
        given: Tensor | None = None,
        first_row: int = 0,
    ) -> Tensor:
        """The sampler behind `sample` and `visuals`; models with a faster one override it."""
        return naive_sample(self, labels, generator, given, first_row)

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        return self.draw(labels, generator)

    @torch.no_grad()
    def visuals(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Completions: the top half of real images, the bottom half sampled by the model."""
        first_row = self.shape.height // 2
        completed = self.draw(labels, generator, given=images, first_row=first_row)
        return {"completions": torch.cat([images, completed])}


def draw_noise(model: AutoregressiveModel, count: int, generator: torch.Generator) -> Tensor:
    shape = model.shape
    size = (count, shape.height, shape.width, shape.channels, model.noise_per_subpixel)
    return torch.rand(size, generator=generator)  # (N, H, W, C, K), on CPU for reproducibility


def softmax_pixel(
    logits_of: Callable[[Tensor], Tensor], images: Tensor, row: int, col: int, noise: Tensor
) -> Tensor:
    """`sample_pixel` of a model with a softmax per sub-pixel: values (N, C) of pixel (row, col),
    each channel drawn from `logits_of(levels so far)` (N, C, levels, H', W'), rerun after the
    channels before it are drawn."""
    # Rows below `row` cannot change its logits, so the naive sampler need not run them.
    rows_so_far = images[:, :, : row + 1].clone()  # (N, C, row + 1, W)
    for channel in range(images.shape[1]):
        logits = logits_of(rows_so_far)[:, channel, :, row, col]  # (N, levels)
        rows_so_far[:, channel, row, col] = sample_categorical(logits, noise[:, channel, 0])
    return rows_so_far[:, :, row, col]


@torch.no_grad()
def naive_sample(
    model: AutoregressiveModel,
    labels: Tensor,
    generator: torch.Generator,
    given: Tensor | None = None,
    first_row: int = 0,
) -> Tensor:
    """Sample pixel by pixel, re-running the whole network for each one."""
    shape = model.shape
    count = len(labels)
    noise = draw_noise(model, count, generator).to(labels.device)
    images = torch.zeros(count, shape.channels, shape.height, shape.width, dtype=torch.long)
    images = images.to(labels.device)
    if given is not None:
        images[:, :, :first_row] = given[:, :, :first_row]
    was_training = model.training
    model.eval()
    for row in range(first_row, shape.height):
        for col in range(shape.width):
            images[:, :, row, col] = model.sample_pixel(
                images, labels, row, col, noise[:, row, col]
            )
    model.train(was_training)
    return images
