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
- Polyak averaging, as in the authors' code (openai/pixel-cnn): PixelCNN++'s default recipe
  (jobs/recipes.py) sets `train.ema_decay: 0.999`, so the training loop evaluates and samples
  with an exponential moving average of the weights.
- Section 3, as the authors train it: with `params.weight_norm` every convolution, transposed
  convolution and 1x1 layer is weight-normalised, w = g * v / ||v|| per output channel
  (Salimans and Kingma 2016). Their data-dependent initialisation of g and the biases is not
  followed: g starts at ||v||, so the network starts as the same function as without weight
  normalisation. Off by default (plain convolutions train stably at these sizes with Adam).
- Class conditioning as Gated PixelCNN has it (van den Oord et al. 2016, section 2.3) and the
  authors' code does it: with `params.conditional` every gated resnet adds a learned vector per
  class to its pre-gate activations [a, b] (a projection of the one-hot label, a plain matrix
  in their code too, so not weight-normalised). Sampling conditions on the labels it is given.
  Off by default: labels are then ignored.

Loss: the exact NLL of the discretized mixture in nats per image (`nll_nats`), divided by the
sub-pixels per image for `loss` so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from jobs.model_params import PixelCNNPPParams
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.shifted_conv import (
    Shift,
    ShiftedConv2d,
    ShiftedConvTranspose2d,
    down_shift,
    right_shift,
)
from trainers.likelihood import (
    discretized_logistic_mixture_nll,
    logistic_mixture_channels,
    sample_discretized_logistic_mixture,
)
from trainers.sampling import AutoregressiveModel

MOST_RESOLUTIONS = 3  # section 2.4: 32x32 -> 16x16 -> 8x8 on CIFAR-10
KERNELS: dict[Shift, tuple[int, int]] = {"down": (2, 3), "down_right": (2, 2)}
CLASS_BIAS_STD = 0.05  # the authors' init of the conditional weights: start near unconditional


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


def weight_normalise(model: nn.Module) -> None:
    """Reparametrise every conv and transposed conv of `model` as g * v / ||v||; the authors'
    dense `nin` layers are the 1x1 convs here.

    g has one entry per output channel: dim 0 of a conv's (out, in, kh, kw) weight, dim 1 of a
    transposed conv's (in, out, kh, kw), as the authors' deconv2d normalises.
    """
    # Listed before any is changed: weight_norm adds submodules while modules() walks them.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    for conv in convs:
        weight_norm(conv, dim=0)
    for deconv in deconvs:
        weight_norm(deconv, dim=1)


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


class PixelCNNPP(AutoregressiveModel):
    name: ClassVar[str] = "pixelcnn_pp"
    noise_per_subpixel: ClassVar[int] = 2  # mixture component, logistic draw

    def __init__(self, params: PixelCNNPPParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        if params.conditional and num_classes < 2:
            raise ValueError(
                f"model.params.conditional: needs a dataset of 2 or more classes, got {num_classes}"
            )
        filters, dropout = params.nr_filters, params.dropout
        classes = num_classes if params.conditional else None
        resolutions = len(resolution_sizes(shape.height, shape.width))
        inputs = shape.channels + 1  # + a channel of ones, see logistic_params
        self.u_input = ShiftedConv2d(inputs, filters, (2, 3), "down")
        self.ul_input_above = ShiftedConv2d(inputs, filters, (1, 3), "down")
        self.ul_input_left = ShiftedConv2d(inputs, filters, (2, 1), "down_right")
        self.contracting = nn.ModuleList(
            nn.ModuleList(
                StreamBlock(filters, dropout, False, classes) for _ in range(params.nr_resnet)
            )
            for _ in range(resolutions)
        )
        self.downsample = nn.ModuleList(
            Resample(filters, ShiftedConv2d) for _ in range(resolutions - 1)
        )
        # Coarsest first. Every resolution but the coarsest has one more block than in the
        # contracting pass: it also takes the skip saved as that resolution was entered.
        self.expanding = nn.ModuleList(
            nn.ModuleList(
                StreamBlock(filters, dropout, True, classes)
                for _ in range(params.nr_resnet + (1 if level else 0))
            )
            for level in range(resolutions)
        )
        self.upsample = nn.ModuleList(
            Resample(filters, ShiftedConvTranspose2d) for _ in range(resolutions - 1)
        )
        mixture_channels = logistic_mixture_channels(shape.channels, params.nr_logistic_mix)
        self.output = nn.Conv2d(filters, mixture_channels, 1)
        if params.weight_norm:
            weight_normalise(self)

    def logistic_params(self, x: Tensor, labels: Tensor) -> Tensor:
        """Mixture params (B, P, H, W) of every pixel from images x (B, C, H, W) in [-1, 1] and
        labels (B,); the params of pixel (i, j) depend only on pixels before it in raster order."""
        # Zero padding would look like mid-grey; the ones channel marks where the image is.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, C + 1, H, W)
        u = down_shift(self.u_input(x))  # (B, F, H, W)
        ul = down_shift(self.ul_input_above(x)) + right_shift(self.ul_input_left(x))
        skips = [(u, ul)]
        for level, blocks in enumerate(self.contracting):
            for block in blocks:
                u, ul = block(u, ul, labels)
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
                u, ul = block(u, ul, labels, u_skip, ul_skip)
        return self.output(F.elu(ul))

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del phase
        levels = self.shape.levels
        params = self.logistic_params(to_unit_range(images, levels), labels)
        nll = discretized_logistic_mixture_nll(params, images, levels)  # (B,)
        return {"loss": nll / self.shape.dims, "nll_nats": nll}

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        levels = self.shape.levels
        params = self.logistic_params(to_unit_range(images, levels), labels)  # (N, P, H, W)
        return sample_discretized_logistic_mixture(params[:, :, row, col], noise, levels)


MODEL = PixelCNNPP
