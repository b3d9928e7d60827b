"""PixelCNN++: Salimans, Karpathy, Chen and Kingma 2017, "PixelCNN++: Improving the PixelCNN
with Discretized Logistic Mixture Likelihood and Other Modifications" (ICLR 2017).

Headline: 2.92 bits/dim on CIFAR-10 test. What this file follows:
- Sections 2.1-2.2: each pixel is a discretized mixture of `nr_logistic_mix` logistics whose G
  mean moves linearly with R and B with R and G (`trainers.likelihood`), so one forward pass
  gives the whole pixel and the network never sees the pixel it predicts.
- Sections 2.3-2.5, figure 2: a down-shifted stream `u` (rows above) and a down-right-shifted
  stream `ul` (rows above and pixels to the left) in place of masks, gated resnet blocks with
  concat_elu and dropout (2.5), strided convolutions down to two coarser resolutions and
  transposed convolutions back up (2.3), with shortcuts from every block of the contracting
  pass into the expanding pass (2.4). Fewer resolutions when the image cannot be halved:
  8 -> 4 -> 2 for digits, 28 -> 14 -> 7, 32 -> 16 -> 8.
- Polyak averaging, as in the authors' code (openai/pixel-cnn): `uses_ema = True` asks the
  training loop to keep an exponential moving average of the weights (decay
  `params.ema_decay`) and to evaluate and sample with it; this class only declares it.
Not followed: weight normalisation and its data-dependent initialisation (plain convolutions
train stably at these sizes with Adam), and class conditioning (labels are ignored).

Loss: the exact NLL of the discretized mixture in nats per image (`nll_nats`), divided by the
sub-pixels per image for `loss` so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.model_params import PixelCNNPPParams
from trainers.api import ImageShape, to_unit_range
from trainers.layers import Shift, ShiftedConv2d, ShiftedConvTranspose2d, down_shift, right_shift
from trainers.likelihood import (
    discretized_logistic_mixture_nll,
    logistic_mixture_channels,
    sample_discretized_logistic_mixture,
)
from trainers.sampling import AutoregressiveModel

MOST_RESOLUTIONS = 3  # section 2.4: 32x32 -> 16x16 -> 8x8 on CIFAR-10
KERNELS: dict[Shift, tuple[int, int]] = {"down": (2, 3), "down_right": (2, 2)}


def resolution_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of each resolution: halve while both sides are even and stay at least 2."""
    sizes = [(height, width)]
    while len(sizes) < MOST_RESOLUTIONS:
        last_h, last_w = sizes[-1]
        if last_h % 2 or last_w % 2 or last_h < 4 or last_w < 4:
            break
        sizes.append((last_h // 2, last_w // 2))
    return sizes


def concat_elu(x: Tensor) -> Tensor:
    """ELU of x and of -x side by side (B, 2C, H, W): keeps the negative half's information."""
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] computed from concat_elu(x) and an optional shortcut input."""

    def __init__(self, filters: int, shift: Shift, shortcut_filters: int, dropout: float) -> None:
        super().__init__()
        kernel = KERNELS[shift]
        self.conv_in = ShiftedConv2d(2 * filters, filters, kernel, shift)
        self.shortcut = nn.Conv2d(2 * shortcut_filters, filters, 1) if shortcut_filters else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = ShiftedConv2d(2 * filters, 2 * filters, kernel, shift)

    def forward(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        hidden = self.conv_in(concat_elu(x))  # (B, F, H, W)
        if self.shortcut is not None and shortcut is not None:
            hidden = hidden + self.shortcut(concat_elu(shortcut))
        hidden = self.dropout(concat_elu(hidden))
        value, gate = self.conv_out(hidden).chunk(2, dim=1)  # (B, F, H, W) each
        return x + value * torch.sigmoid(gate)


class StreamBlock(nn.Module):
    """One gated resnet on each stream; `ul` also reads `u`, so it sees the rows above too.

    In the expanding pass both streams also read the contracting pass's output at the same
    depth (`u_skip`, `ul_skip`, section 2.4).
    """

    def __init__(self, filters: int, dropout: float, with_skips: bool) -> None:
        super().__init__()
        skip_filters = filters if with_skips else 0
        self.u_block = GatedResnet(filters, "down", skip_filters, dropout)
        self.ul_block = GatedResnet(filters, "down_right", filters + skip_filters, dropout)

    def forward(
        self, u: Tensor, ul: Tensor, u_skip: Tensor | None = None, ul_skip: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        u = self.u_block(u, u_skip)
        ul_shortcut = u if ul_skip is None else torch.cat([u, ul_skip], dim=1)
        return u, self.ul_block(ul, ul_shortcut)


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


class PixelCNNPP(AutoregressiveModel):
    name: ClassVar[str] = "pixelcnn_pp"
    uses_ema: ClassVar[bool] = True
    noise_per_subpixel: ClassVar[int] = 2  # mixture component, logistic draw

    def __init__(self, params: PixelCNNPPParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        filters, dropout = params.nr_filters, params.dropout
        resolutions = len(resolution_sizes(shape.height, shape.width))
        inputs = shape.channels + 1  # + a channel of ones, see logistic_params
        self.u_input = ShiftedConv2d(inputs, filters, (2, 3), "down")
        self.ul_input_above = ShiftedConv2d(inputs, filters, (1, 3), "down")
        self.ul_input_left = ShiftedConv2d(inputs, filters, (2, 1), "down_right")
        self.contracting = nn.ModuleList(
            nn.ModuleList(StreamBlock(filters, dropout, False) for _ in range(params.nr_resnet))
            for _ in range(resolutions)
        )
        self.downsample = nn.ModuleList(
            Resample(filters, ShiftedConv2d) for _ in range(resolutions - 1)
        )
        # Coarsest first. Every resolution but the coarsest has one more block than in the
        # contracting pass: it also takes the skip saved as that resolution was entered.
        self.expanding = nn.ModuleList(
            nn.ModuleList(
                StreamBlock(filters, dropout, True)
                for _ in range(params.nr_resnet + (1 if level else 0))
            )
            for level in range(resolutions)
        )
        self.upsample = nn.ModuleList(
            Resample(filters, ShiftedConvTranspose2d) for _ in range(resolutions - 1)
        )
        mixture_channels = logistic_mixture_channels(shape.channels, params.nr_logistic_mix)
        self.output = nn.Conv2d(filters, mixture_channels, 1)

    def logistic_params(self, x: Tensor) -> Tensor:
        """Mixture params (B, P, H, W) of every pixel from images x (B, C, H, W) in [-1, 1];
        the params of pixel (i, j) depend only on pixels before it in raster order."""
        # Zero padding would look like mid-grey; the ones channel marks where the image is.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, C + 1, H, W)
        u = down_shift(self.u_input(x))  # (B, F, H, W)
        ul = down_shift(self.ul_input_above(x)) + right_shift(self.ul_input_left(x))
        skips = [(u, ul)]
        for level, blocks in enumerate(self.contracting):
            for block in blocks:
                u, ul = block(u, ul)
                skips.append((u, ul))
            if level < len(self.downsample):
                u, ul = self.downsample[level](u, ul)
                skips.append((u, ul))
        u, ul = skips.pop()
        for level, blocks in enumerate(self.expanding):
            if level:
                u, ul = self.upsample[level - 1](u, ul)
            for block in blocks:
                u_skip, ul_skip = skips.pop()
                u, ul = block(u, ul, u_skip, ul_skip)
        return self.output(F.elu(ul))

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del labels, phase
        levels = self.shape.levels
        params = self.logistic_params(to_unit_range(images, levels))
        nll = discretized_logistic_mixture_nll(params, images, levels)  # (B,)
        return {"loss": nll / self.shape.dims, "nll_nats": nll}

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        del labels
        levels = self.shape.levels
        params = self.logistic_params(to_unit_range(images, levels))[:, :, row, col]  # (N, P)
        return sample_discretized_logistic_mixture(params, noise, levels)


MODEL = PixelCNNPP
