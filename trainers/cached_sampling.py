"""Fast sampling for autoregressive models: cache every layer's activations and, as each pixel
is drawn, compute only that pixel's position in every layer.

Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models": a layer's
output at (i, j) reads its input only in a kernel-sized neighbourhood, all of which is already
final when (i, j) comes up in raster order. Naive sampling reruns the network over the whole
image for every sub-pixel, O((HW)^2) positions per image; this computes O(HW). The PixelRNNs'
incremental networks (trainers/models/pixelrnn_*.py) keep their LSTM states the same way, and
PixelCNN++'s (trainers/models/pixelcnn_pp_caches.py) computes a coarser resolution's position
once the finer positions it reads are final.

`cached_sample` draws the same up-front noise as `naive_sample` and spends it in the same
order, each model drawing a pixel as its `sample_pixel` does (`sample_cached_pixel`). Its logits
equal the full network's up to float rounding (a matrix product in place of a convolution sums
in another order), so the images are the same unless a uniform lands within that rounding of a
step of the CDF, or a logistic draw within it of the edge between two levels; the tests check
torch.equal.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.heads import SubpixelLogitHead
from trainers.layers.masked_conv import MaskedConv2d
from trainers.layers.shifted_conv import ShiftedConv2d
from trainers.likelihood import sample_categorical
from trainers.sampling import AutoregressiveModel, draw_noise


class FeatureCache:
    """One layer's activations for N images inside a zero border `border` pixels wide.

    The border stands in for the zero padding of the full-image convolution, so what a kernel
    reads around (row, col) is one slice, at the edges too. Positions not yet computed hold
    zeros; causal kernels give them zero weight. Stored channels-last, (N, H', W', C), so that
    a pixel's channels and a kernel row's pixels lie next to each other in memory.
    """

    def __init__(
        self, count: int, channels: int, shape: ImageShape, border: int, device: torch.device
    ) -> None:
        self.border = border
        size = (count, shape.height + 2 * border, shape.width + 2 * border, channels)
        self.values = torch.zeros(size, device=device)

    def window(self, top: int, left: int, height: int, width: int) -> Tensor:
        """(N, height, width, C) from image coordinates (top, left), which may be in the border."""
        top, left = top + self.border, left + self.border
        return self.values[:, top : top + height, left : left + width]

    def read(self, row: int, col: int) -> Tensor:
        return self.values[:, row + self.border, col + self.border]  # (N, C)

    def write(self, row: int, col: int, values: Tensor) -> None:
        self.values[:, row + self.border, col + self.border] = values  # (N, C)

    def write_row(self, row: int, values: Tensor) -> None:
        """values (N, C, W), channels-first as a convolution returns them."""
        pixels = values.transpose(1, 2)  # (N, W, C)
        self.values[:, row + self.border, self.border : self.border + pixels.shape[1]] = pixels


class PositionConv:
    """A (masked or shifted) convolution at one output position: a matrix product with the
    patch its kernel covers there. The masked weights are read once, when sampling starts."""

    def __init__(self, conv: nn.Conv2d) -> None:
        weight = conv.weight.permute(0, 2, 3, 1)  # (out, kh, kw, in): the cache's layout
        if isinstance(conv, MaskedConv2d):
            # Kernel rows below the centre are all masked: leave them out of the patch.
            weight = (weight * conv.mask.permute(0, 2, 3, 1))[:, : conv.kernel_size[0] // 2 + 1]
        self.rows, self.cols = weight.shape[1], weight.shape[2]
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))
        if isinstance(conv, ShiftedConv2d):
            left, _, top, _ = conv.causal_padding
            self.padding = (top, left)
        self.matrix = weight.flatten(1).t()  # (rows * cols * in, out)
        self.bias = weight.new_zeros(weight.shape[0]) if conv.bias is None else conv.bias

    def __call__(self, patch: Tensor) -> Tensor:
        """A flattened patch (N, rows * cols * in) -> outputs (N, out); a 1x1 conv takes (N, in)."""
        return torch.addmm(self.bias, patch, self.matrix)

    def patch(self, cache: FeatureCache, row: int, col: int) -> Tensor:
        """(N, rows, cols, in): what the kernel covers for output (row, col) of `cache`, padded
        as the convolution pads; strided, it is at the input position (row, col) maps to."""
        pad_h, pad_w = self.padding
        return cache.window(row - pad_h, col - pad_w, self.rows, self.cols)

    def at(self, cache: FeatureCache, row: int, col: int) -> Tensor:
        """Outputs (N, out) at (row, col) of the convolution of `cache`."""
        return self(self.patch(cache, row, col).flatten(1))


class PositionHead:
    """`SubpixelLogitHead` at one position: features (N, F) -> logits (N, C, levels)."""

    def __init__(self, head: SubpixelLogitHead) -> None:
        self.hidden = PositionConv(head.hidden)
        self.out = PositionConv(head.out)
        self.logit_shape = (head.image_channels, head.levels)

    def __call__(self, features: Tensor) -> Tensor:
        logits = self.out(F.relu(self.hidden(F.relu(features))))  # (N, C * levels)
        return logits.unflatten(1, self.logit_shape)


class IncrementalNetwork(Protocol):
    """A network part way through a batch of images, advanced one pixel at a time."""

    image: FeatureCache  # the input in [-1, 1]; the sampler writes each drawn pixel here

    def start_row(self, row: int) -> None:
        """Rows above `row` are final: compute what the network computes a row at a time."""

    def logits_at(self, row: int, col: int) -> Tensor:
        """What the full network outputs for pixel (row, col); updates every layer's cache
        there. A softmax model's logits (N, C, levels), asked again as each channel is drawn;
        PixelCNN++'s mixture params (N, P), asked once."""


class IncrementalModel(AutoregressiveModel):
    """An autoregressive model whose network can also run one pixel at a time: it samples and
    completes through `cached_sample`, and its naive `sample_pixel` stays the reference."""

    def incremental(self, labels: Tensor) -> IncrementalNetwork:
        """A fresh incremental network for `len(labels)` images, all caches empty."""
        raise NotImplementedError

    def sample_cached_pixel(
        self, network: IncrementalNetwork, row: int, col: int, noise: Tensor
    ) -> Tensor:
        """`sample_pixel` from `network`: values (N, C) of pixel (row, col), written into
        `network.image`. This default draws from a softmax per sub-pixel, channel by channel.

        noise: (N, C, noise_per_subpixel) uniforms in [0, 1).
        """
        values = torch.zeros(noise.shape[:2], dtype=torch.long, device=noise.device)  # (N, C)
        for channel in range(self.shape.channels):
            logits = network.logits_at(row, col)  # (N, C, levels)
            values[:, channel] = sample_categorical(logits[:, channel], noise[:, channel, 0])
            network.image.write(row, col, to_unit_range(values, self.shape.levels))
        return values

    def draw(
        self,
        labels: Tensor,
        generator: torch.Generator,
        given: Tensor | None = None,
        first_row: int = 0,
    ) -> Tensor:
        return cached_sample(self, labels, generator, given=given, first_row=first_row)


@torch.no_grad()
def cached_sample(
    model: IncrementalModel,
    labels: Tensor,
    generator: torch.Generator,
    given: Tensor | None = None,
    first_row: int = 0,
) -> Tensor:
    """`naive_sample`'s images (N, C, H, W) levels, computing each position of each layer once
    per sub-pixel instead of once per sub-pixel per earlier sub-pixel."""
    shape = model.shape
    count = len(labels)
    noise = draw_noise(model, count, generator).to(labels.device)  # (N, H, W, C, 1)
    images = torch.zeros(
        count, shape.channels, shape.height, shape.width, dtype=torch.long, device=labels.device
    )
    if given is not None:
        images[:, :, :first_row] = given[:, :, :first_row]
    was_training = model.training
    model.eval()
    network = model.incremental(labels)
    for row in range(shape.height):
        network.start_row(row)
        for col in range(shape.width):
            if row < first_row:
                # Given pixels are not drawn, but every layer's cache still needs them.
                network.image.write(row, col, to_unit_range(images[:, :, row, col], shape.levels))
                network.logits_at(row, col)
                continue
            images[:, :, row, col] = model.sample_cached_pixel(
                network, row, col, noise[:, row, col]
            )
    model.train(was_training)
    return images
