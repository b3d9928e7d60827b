"""Gated units and the per-sub-pixel softmax head, both on the colour-grouped channel layout
`MaskedConv2d` masks by."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.layers.masked_conv import MaskedConv2d


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
