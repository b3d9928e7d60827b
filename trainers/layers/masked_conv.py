"""Masked convolutions for raster-order autoregression (PixelCNN, Gated PixelCNN, PixelRNN)."""

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
