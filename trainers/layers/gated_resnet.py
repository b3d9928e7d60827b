"""PixelCNN++'s gated resnet blocks on its two causal streams (Salimans et al. 2017, sections
2.3-2.5, figure 2), shared by the model (trainers/models/pixelcnn_pp.py) and its incremental
network (trainers/models/pixelcnn_pp_caches.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.layers.shifted_conv import Shift, ShiftedConv2d, ShiftedConvTranspose2d

KERNELS: dict[Shift, tuple[int, int]] = {"down": (2, 3), "down_right": (2, 2)}
CLASS_BIAS_STD = 0.05  # the authors' init of the conditional weights: start near unconditional


def concat_elu(x: Tensor, dim: int = 1) -> Tensor:
    """ELU of x and of -x side by side along `dim` (channels): keeps the negative half's
    information. (B, C, H, W) -> (B, 2C, H, W) by default."""
    return F.elu(torch.cat([x, -x], dim=dim))


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] computed from concat_elu(x), an optional shortcut input and,
    when `num_classes` is given, a learned bias per class."""

    def __init__(
        self,
        filters: int,
        shift: Shift,
        shortcut_filters: int,
        dropout: float,
        num_classes: int | None,
    ) -> None:
        super().__init__()
        kernel = KERNELS[shift]
        self.conv_in = ShiftedConv2d(2 * filters, filters, kernel, shift)
        self.shortcut = nn.Conv2d(2 * shortcut_filters, filters, 1) if shortcut_filters else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = ShiftedConv2d(2 * filters, 2 * filters, kernel, shift)
        self.class_bias = None
        if num_classes is not None:
            self.class_bias = nn.Embedding(num_classes, 2 * filters)
            nn.init.normal_(self.class_bias.weight, std=CLASS_BIAS_STD)

    def forward(self, x: Tensor, labels: Tensor, shortcut: Tensor | None = None) -> Tensor:
        hidden = self.conv_in(concat_elu(x))  # (B, F, H, W)
        if self.shortcut is not None and shortcut is not None:
            hidden = hidden + self.shortcut(concat_elu(shortcut))
        hidden = self.dropout(concat_elu(hidden))
        pre_gate = self.conv_out(hidden)  # (B, 2F, H, W)
        if self.class_bias is not None:
            pre_gate = pre_gate + self.class_bias(labels)[:, :, None, None]
        value, gate = pre_gate.chunk(2, dim=1)  # (B, F, H, W) each
        return x + value * torch.sigmoid(gate)


class StreamBlock(nn.Module):
    """One gated resnet on each stream; `ul` also reads `u`, so it sees the rows above too.

    In the expanding pass both streams also read the contracting pass's output at the same
    depth (`u_skip`, `ul_skip`, section 2.4).
    """

    def __init__(
        self, filters: int, dropout: float, with_skips: bool, num_classes: int | None
    ) -> None:
        super().__init__()
        skip_filters = filters if with_skips else 0
        self.u_block = GatedResnet(filters, "down", skip_filters, dropout, num_classes)
        self.ul_block = GatedResnet(
            filters, "down_right", filters + skip_filters, dropout, num_classes
        )

    def forward(
        self,
        u: Tensor,
        ul: Tensor,
        labels: Tensor,
        u_skip: Tensor | None = None,
        ul_skip: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        u = self.u_block(u, labels, u_skip)
        ul_shortcut = u if ul_skip is None else torch.cat([u, ul_skip], dim=1)
        return u, self.ul_block(ul, labels, ul_shortcut)


class Resample(nn.Module):
    """Halve (strided ShiftedConv2d) or double (ShiftedConvTranspose2d) both streams."""

    def __init__(
        self, filters: int, conv: type[ShiftedConv2d] | type[ShiftedConvTranspose2d]
    ) -> None:
        super().__init__()
        self.u_conv = conv(filters, filters, KERNELS["down"], "down", stride=2)
        self.ul_conv = conv(filters, filters, KERNELS["down_right"], "down_right", stride=2)

    def forward(self, u: Tensor, ul: Tensor) -> tuple[Tensor, Tensor]:
        return self.u_conv(u), self.ul_conv(ul)
