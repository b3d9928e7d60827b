"""Layers shared by several models: masked convolutions for raster-order autoregression."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: tuple[int, int],
    mask_type: Literal["A", "B"],
    colour_groups: int,
) -> Tensor:
    """Mask (out, in, kh, kw) that lets each output see only earlier pixels and colours.

    Spatially: every row above the centre and, in the centre row, pixels to the left
    (van den Oord et al. 2016, section 3.5, figure 2). At the centre pixel, channels are split
    into `colour_groups` (R, G, B) and output group g sees input groups < g (type A, first
    layer) or <= g (type B, later layers), so G depends on R and B on R and G but never on
    itself or later colours.
    """
    kernel_h, kernel_w = kernel_size
    mask = torch.ones(out_channels, in_channels, kernel_h, kernel_w)
    centre_h, centre_w = kernel_h // 2, kernel_w // 2
    mask[:, :, centre_h, centre_w + 1 :] = 0
    mask[:, :, centre_h + 1 :, :] = 0
    out_group = torch.arange(out_channels) * colour_groups // out_channels  # (out,)
    in_group = torch.arange(in_channels) * colour_groups // in_channels  # (in,)
    if mask_type == "A":
        visible = out_group[:, None] > in_group[None, :]
    else:
        visible = out_group[:, None] >= in_group[None, :]
    mask[:, :, centre_h, centre_w] = visible.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel is multiplied by a causal mask on every call."""

    mask: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: Literal["A", "B"],
        colour_groups: int = 1,
        bias: bool = True,
    ) -> None:
        size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(
            in_channels, out_channels, size, padding=(size[0] // 2, size[1] // 2), bias=bias
        )
        mask = causal_mask(out_channels, in_channels, size, mask_type, colour_groups)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


def skew(x: Tensor) -> Tensor:
    """Shift row i of (B, C, H, W) right by i -> (B, C, H, W + H - 1), zeros elsewhere.

    Pixel (i, j) lands in column i + j, so its left neighbour (i, j - 1) and the pixel above it
    (i - 1, j) both sit in the previous column: a left-to-right scan over columns then walks the
    image one diagonal at a time (van den Oord et al. 2016, section 3.2, figure 3).
    """
    batch, channels, height, width = x.shape
    padded = F.pad(x, (0, height))  # (B, C, H, W + H)
    flat = padded.flatten(2)[:, :, : height * (width + height - 1)]  # row i now starts i later
    return flat.reshape(batch, channels, height, width + height - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """Inverse of `skew`: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    batch, channels, height, _ = x.shape
    flat = F.pad(x.flatten(2), (0, height))  # (B, C, H * (W + H))
    return flat.view(batch, channels, height, width + height)[..., :width]


def lstm_scan(input_gates: Tensor, state_to_state: nn.Module, hidden: int) -> Tensor:
    """Run a convolutional LSTM along the last axis of a map, one whole line of states per step.

    input_gates: (B, blocks * 4 * hidden, L, T) input-to-state pre-activations of every step,
    laid out as blocks (colour groups, directions), each holding the output, forget, input and
    candidate gates of `hidden` units. `state_to_state` maps the previous line of hidden states
    (B, blocks * hidden, L) to gate pre-activations (B, blocks * 4 * hidden, L); convolving along
    L is what turns a 1-D LSTM into the 2-D ones of sections 3.1 and 3.2.
    Returns the hidden states (B, blocks * hidden, L, T), block-major like the gates.
    """
    batch, gate_channels, length, _ = input_gates.shape
    blocks = gate_channels // (4 * hidden)
    state = input_gates.new_zeros(batch, blocks * hidden, length)
    cell = input_gates.new_zeros(batch, blocks, hidden, length)
    states = []
    for step_gates in input_gates.unbind(-1):
        gates = step_gates + state_to_state(state)  # (B, blocks * 4 * hidden, L)
        output, forget, write, candidate = gates.view(batch, blocks, 4, hidden, length).unbind(2)
        cell = torch.sigmoid(forget) * cell + torch.sigmoid(write) * torch.tanh(candidate)
        state = (torch.sigmoid(output) * torch.tanh(cell)).flatten(1, 2)  # (B, blocks*hidden, L)
        states.append(state)
    return torch.stack(states, dim=-1)


# Salimans et al. 2017 (PixelCNN++), section 2.3: instead of masking, pad and crop so that each
# output sees only rows above (`down`) or rows above plus columns to its left (`down_right`).
# Two such streams together cover the whole causal past, with no blind spot.
Shift = Literal["down", "down_right"]


def down_shift(x: Tensor) -> Tensor:
    """Move (B, C, H, W) one row down, zeros on top: row i then holds what row i - 1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: Tensor) -> Tensor:
    """Move (B, C, H, W) one column right, zeros on the left."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def _columns_left(kernel_width: int, shift: Shift) -> int:
    """How far left of its own column an output looks: half the kernel, or all of it."""
    return (kernel_width - 1) // 2 if shift == "down" else kernel_width - 1


class ShiftedConv2d(nn.Conv2d):
    """Convolution whose output (i, j) reads input rows i - kh + 1 .. i only.

    `down` centres the kernel's columns on j, `down_right` ends them at j. With stride 2 and even
    input sizes the output is exactly half the size (PixelCNN++'s down-sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        shift: Shift,
        stride: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kernel_h, kernel_w = kernel_size
        left = _columns_left(kernel_w, shift)
        self.causal_padding = (left, kernel_w - 1 - left, kernel_h - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.causal_padding))


class ShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Transposed convolution that multiplies the size by `stride` and stays causal.

    Input row a writes output rows stride*a .. stride*a + kh - 1, at or below the fine rows a
    stride-2 ShiftedConv2d read to produce it; the crop keeps the first H*stride rows and, for
    `down`, re-centres the columns (PixelCNN++'s up-sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        shift: Shift,
        stride: int = 2,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kernel_w = kernel_size[1]
        self.crop_left = kernel_w - 1 - _columns_left(kernel_w, shift)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2] * self.stride[0], x.shape[3] * self.stride[1]
        out = super().forward(x)  # (B, C, (H-1)*s + kh, (W-1)*s + kw)
        return out[:, :, :height, self.crop_left : self.crop_left + width]


def downsampling_stages(height: int, width: int) -> int:
    """Stride-2 stages that take an image, zero-padded to a square, down to a 4x4 map.

    One for 8x8 digits (side 8), three for 28x28 MNIST and 32x32 CIFAR-10 (side 32).
    """
    stages = 1
    while 4 * 2**stages < max(height, width):
        stages += 1
    return stages


def _margins(side: int, size: int) -> tuple[int, int]:
    """Padding before and after `size` that centres it in `side`."""
    before = (side - size) // 2
    return before, side - size - before


class ConvEncoder(nn.Module):
    """Image floats (B, C, H, W) -> features (B, out_features): DCGAN-style strided convs.

    Zero-pads to a square whose side halves exactly down to 4, halves it with 4x4 stride-2
    convolutions (no pooling; Radford et al. 2016, section 3) while doubling the width from
    `channels`, then maps the 4x4 map linearly to `out_features`. LeakyReLU(0.2) throughout;
    with `batchnorm`, every conv but the first is batch-normalised (the DCGAN discriminator
    leaves its input layer unnormalised).
    """

    def __init__(
        self,
        image_channels: int,
        height: int,
        width: int,
        channels: int,
        out_features: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        stages = downsampling_stages(height, width)
        side = 4 * 2**stages
        self.padding = (*_margins(side, width), *_margins(side, height))  # left right top bottom
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for stage in range(1, stages):
            width_in, width_out = channels * 2 ** (stage - 1), channels * 2**stage
            layers.append(nn.Conv2d(width_in, width_out, 4, 2, 1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width_out))
            layers.append(nn.LeakyReLU(0.2))
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 2 ** (stages - 1) * 4 * 4, out_features)

    def forward(self, images: Tensor) -> Tensor:
        padded = F.pad(images, self.padding)  # (B, C, S, S)
        return self.head(self.convs(padded).flatten(1))  # (B, out_features)


class ConvDecoder(nn.Module):
    """Vector (B, in_features) -> map (B, out_channels, H, W): the mirror of ConvEncoder.

    A linear projection to a 4x4 map, 4x4 stride-2 transposed convolutions that double the side
    and halve the width down to `channels`, a last one to `out_channels`, and a centre crop to
    H x W. ReLU between layers; with `batchnorm`, every layer but the output is
    batch-normalised (the DCGAN generator). The output has no activation: callers apply tanh
    or read it as logits.
    """

    def __init__(
        self,
        in_features: int,
        channels: int,
        out_channels: int,
        height: int,
        width: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        stages = downsampling_stages(height, width)
        side = 4 * 2**stages
        self.top_channels = channels * 2 ** (stages - 1)
        self.crop = (_margins(side, height)[0], _margins(side, width)[0], height, width)
        self.project = nn.Linear(in_features, self.top_channels * 4 * 4, bias=not batchnorm)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.top_channels)] if batchnorm else []
        layers.append(nn.ReLU())
        for stage in reversed(range(1, stages)):
            width_in, width_out = channels * 2**stage, channels * 2 ** (stage - 1)
            layers.append(nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width_out))
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, 2, 1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        top, left, height, width = self.crop
        grid = self.project(features).view(-1, self.top_channels, 4, 4)  # (B, C', 4, 4)
        full = self.deconvs(grid)  # (B, out_channels, S, S)
        return full[:, :, top : top + height, left : left + width]  # (B, out_channels, H, W)


def unit_range_to_levels(values: Tensor, levels: int) -> Tensor:
    """Floats in [-1, 1] -> nearest integer levels in [0, levels): inverse of to_unit_range."""
    scaled = (values + 1.0) * ((levels - 1) / 2.0)
    return scaled.round().clamp(0, levels - 1).long()


def gated_activation(x: Tensor, colour_groups: int) -> Tensor:
    """tanh(a) * sigmoid(b) over channels laid out [colour group][a | b][features]: (N, 2F, ...)
    -> (N, F, ...).

    Each colour group's block holds its own tanh and sigmoid halves, so the gate keeps the
    R/G/B layout that `MaskedConv2d` masks by (van den Oord et al. NIPS 2016, equation 2).
    """
    halves = x.unflatten(1, (colour_groups, 2, -1))  # (N, groups, 2, F / groups, ...)
    gated = torch.tanh(halves[:, :, 0]) * torch.sigmoid(halves[:, :, 1])
    return gated.flatten(1, 2)


class SubpixelLogitHead(nn.Module):
    """ReLU -> masked 1x1 -> ReLU -> masked 1x1: features (B, F, H, W) -> logits (B, C, levels,
    H, W), a `levels`-way softmax per sub-pixel.

    Type-B masks let colour c's logits read only features of colours <= c, which have seen
    colours < c of the same pixel (van den Oord et al. 2016, section 3.5).
    """

    def __init__(self, in_channels: int, hidden: int, image_channels: int, levels: int) -> None:
        super().__init__()
        self.image_channels = image_channels
        self.levels = levels
        self.hidden = MaskedConv2d(in_channels, hidden, 1, "B", image_channels)
        self.out = MaskedConv2d(hidden, image_channels * levels, 1, "B", image_channels)

    def forward(self, features: Tensor) -> Tensor:
        logits = self.out(F.relu(self.hidden(F.relu(features))))  # (B, C * levels, H, W)
        return logits.unflatten(1, (self.image_channels, self.levels))
