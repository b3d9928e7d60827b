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
- Sampling and completions go through `cached_sample` (Ramachandran et al. 2017, issue 14):
  each position of each layer at each resolution is computed once (pixelcnn_pp_caches.py),
  and the images are the naive sampler's for the same generator.

Loss: the exact NLL of the discretized mixture in nats per image (`nll_nats`), divided by the
sub-pixels per image for `loss` so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from trainers.cached_sampling import (
    FeatureCache,
    IncrementalModel,
    IncrementalNetwork,
    PositionConv,
)
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.gated_resnet import Resample, StreamBlock
from trainers.layers.shifted_conv import (
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
from trainers.models.pixelcnn_pp_caches import Coarser, ResolutionCaches, last_row

if TYPE_CHECKING:  # pydantic stays out of a bare GPU box's run (bench/gpu_bench.py)
    from jobs.model_params import PixelCNNPPParams

MOST_RESOLUTIONS = 3  # section 2.4: 32x32 -> 16x16 -> 8x8 on CIFAR-10


def resolution_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of each resolution: halve while both sides are even and stay at least 2."""
    sizes = [(height, width)]
    while len(sizes) < MOST_RESOLUTIONS:
        last_h, last_w = sizes[-1]
        if last_h % 2 or last_w % 2 or last_h < 4 or last_w < 4:
            break
        sizes.append((last_h // 2, last_w // 2))
    return sizes


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


class PixelCNNPP(IncrementalModel):
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

    def incremental(self, labels: Tensor) -> PixelCNNPPCaches:
        return PixelCNNPPCaches(self, labels)

    def sample_cached_pixel(
        self, network: IncrementalNetwork, row: int, col: int, noise: Tensor
    ) -> Tensor:
        """One network pass per pixel, as `sample_pixel`: the mixture gives all its channels."""
        levels = self.shape.levels
        values = sample_discretized_logistic_mixture(network.logits_at(row, col), noise, levels)
        network.image.write(row, col, to_unit_range(values, levels))
        return values


class PixelCNNPPCaches:
    """PixelCNN++ one pixel at a time: the input convolutions and the head at each pixel, the
    resolutions' caches (trainers/models/pixelcnn_pp_caches.py) in between."""

    def __init__(self, model: PixelCNNPP, labels: Tensor) -> None:
        shape, count, device = model.shape, len(labels), labels.device
        self.model = model
        self.image = FeatureCache(count, shape.channels, shape, 1, device)
        # logistic_params' channel of ones: one inside the image, zero in the border as padded.
        self.ones = FeatureCache(count, 1, shape, 1, device)
        self.ones.window(0, 0, shape.height, shape.width).fill_(1.0)
        self.ul_input_left = PositionConv(model.ul_input_left)
        self.output = PositionConv(model.output)
        # What ul sees above each pixel of the current row: the first row sees zeros.
        self.ul_above = torch.zeros(count, model.params.nr_filters, shape.width, device=device)
        sizes = resolution_sizes(shape.height, shape.width)
        self.resolutions = self._resolutions(labels, sizes)

    def _resolutions(self, labels: Tensor, sizes: list[tuple[int, int]]) -> ResolutionCaches:
        """The finest resolution's caches, which hold the coarser ones; built coarsest first."""
        model, coarsest = self.model, len(sizes) - 1
        caches = None
        for level in reversed(range(len(sizes))):
            coarser = None
            if caches is not None:
                resampling = model.downsample[level], model.upsample[coarsest - 1 - level]
                coarser = Coarser(*resampling, caches)
            height, width = sizes[level]
            shape = ImageShape(model.params.nr_filters, height, width, model.shape.levels)
            blocks = model.contracting[level], model.expanding[coarsest - level]
            caches = ResolutionCaches(*blocks, labels, shape, coarser)
        assert caches is not None  # sizes always holds the full resolution
        return caches

    def _input_rows(self, top: int, height: int) -> Tensor:
        """Image rows top .. top + height - 1 with the channel of ones: (N, C + 1, height, W)."""
        rows = self.image.window(top, 0, height, self.model.shape.width).permute(0, 3, 1, 2)
        return torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)

    def start_row(self, row: int) -> None:
        u_entry = torch.zeros_like(self.ul_above)  # down_shift: the first row sees zeros
        if row > 0:
            # down_shift: row `row` is the first convolutions' row - 1.
            u_rows = self._input_rows(max(0, row - 2), min(row, 2))
            u_entry = last_row(self.model.u_input(u_rows))
            self.ul_above = last_row(self.model.ul_input_above(self._input_rows(row - 1, 1)))
        self.resolutions.advance_row(row, u_entry)

    def logits_at(self, row: int, col: int) -> Tensor:
        """The mixture params (N, P) of pixel (row, col)."""
        ul_entry = self.ul_above[:, :, col]  # (N, F)
        if col > 0:
            # right_shift: the view to the left is ul_input_left at col - 1.
            conv, left = self.ul_input_left, col - 1
            patch = torch.cat(
                [conv.patch(self.image, row, left), conv.patch(self.ones, row, left)], dim=-1
            )  # (N, 2, 1, C + 1)
            ul_entry = ul_entry + conv(patch.flatten(1))
        features = self.resolutions.advance_pixel(row, col, ul_entry)  # (N, F)
        return self.output(F.elu(features))


MODEL = PixelCNNPP
