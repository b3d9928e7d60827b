"""Shifted convolutions, causal by padding and cropping instead of masking.

Salimans et al. 2017 (PixelCNN++), section 2.3: each output sees only rows above (`down`) or
rows above plus columns to its left (`down_right`). Two such streams together cover the whole
causal past, with no blind spot.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

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
