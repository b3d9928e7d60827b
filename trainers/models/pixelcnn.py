"""PixelCNN: van den Oord, Kalchbrenner and Kavukcuoglu 2016, "Pixel Recurrent Neural
Networks" (ICML 2016).

What this file follows: section 3.5's masked convolutions, a type-A first layer (a sub-pixel
never sees itself) and type-B layers after it, with the R -> G -> B channel masks of figure 2;
the residual blocks of figure 5 (ReLU, 1x1 from 2h to h, ReLU, masked 3x3, ReLU, 1x1 back to
2h, plus the input); two masked 1x1 convolutions to a `levels`-way softmax per sub-pixel
(section 5.1: 256-way for 8-bit data, 2-way for binarized MNIST, 17-way for `digits`).
Headline: 3.14 bits/dim on CIFAR-10 test and 81.30 nats on binarized MNIST (tables 4 and 5).

Loss: the exact NLL of the softmaxes in nats per image (`nll_nats`), divided by the sub-pixels
per image for `loss` so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.model_params import PixelCNNParams
from trainers.cached_sampling import FeatureCache, IncrementalModel, PositionConv, PositionHead
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.heads import SubpixelLogitHead
from trainers.layers.masked_conv import MaskedConv2d
from trainers.likelihood import categorical_nll
from trainers.sampling import softmax_pixel


class ResidualBlock(nn.Module):
    """Figure 5 on a stream of 2h features per colour group, every conv masked type B."""

    def __init__(self, hidden: int, colour_groups: int) -> None:
        super().__init__()
        self.reduce = MaskedConv2d(2 * hidden, hidden, 1, "B", colour_groups)
        self.masked = MaskedConv2d(hidden, hidden, 3, "B", colour_groups)
        self.expand = MaskedConv2d(hidden, 2 * hidden, 1, "B", colour_groups)

    def forward(self, stream: Tensor) -> Tensor:
        bottleneck = F.relu(self.reduce(F.relu(stream)))  # (B, h, H, W)
        return stream + self.expand(F.relu(self.masked(bottleneck)))


class PixelCNN(IncrementalModel):
    name: ClassVar[str] = "pixelcnn"

    def __init__(self, params: PixelCNNParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        groups = shape.channels
        # `params.channels` is h per colour group; the residual stream carries 2h (figure 5).
        hidden = params.channels * groups
        self.input_conv = MaskedConv2d(groups, 2 * hidden, params.first_kernel, "A", groups)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, groups) for _ in range(params.layers))
        self.head = SubpixelLogitHead(2 * hidden, params.output_hidden, groups, shape.levels)

    def logits(self, images: Tensor, labels: Tensor) -> Tensor:
        """Levels (B, C, H, W) -> logits (B, C, levels, H, W), causal in raster order."""
        del labels
        stream = self.input_conv(to_unit_range(images, self.shape.levels))  # (B, 2h, H, W)
        for block in self.blocks:
            stream = block(stream)
        return self.head(stream)

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del phase
        nll_nats = categorical_nll(self.logits(images, labels), images)  # (B,)
        return {"loss": nll_nats / self.shape.dims, "nll_nats": nll_nats}

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        return softmax_pixel(lambda rows: self.logits(rows, labels), images, row, col, noise)

    def incremental(self, labels: Tensor) -> PixelCNNCaches:
        return PixelCNNCaches(self, len(labels), labels.device)


class PixelCNNCaches:
    """PixelCNN one pixel at a time. Only the inputs of the convolutions wider than 1x1 (the
    image and each block's bottleneck) need caching; the rest is read at (row, col) alone."""

    def __init__(self, model: PixelCNN, count: int, device: torch.device) -> None:
        shape = model.shape
        self.image = FeatureCache(
            count, shape.channels, shape, model.params.first_kernel // 2, device
        )
        self.input_conv = PositionConv(model.input_conv)
        self.blocks = [
            (PositionConv(block.reduce), PositionConv(block.masked), PositionConv(block.expand))
            for block in model.blocks
        ]
        hidden = model.params.channels * shape.channels
        self.bottlenecks = [FeatureCache(count, hidden, shape, 1, device) for _ in self.blocks]
        self.head = PositionHead(model.head)

    def start_row(self, row: int) -> None:
        del row  # every layer works pixel by pixel

    def logits_at(self, row: int, col: int) -> Tensor:
        stream = self.input_conv.at(self.image, row, col)  # (N, 2h)
        for (reduce, masked, expand), bottleneck in zip(self.blocks, self.bottlenecks, strict=True):
            bottleneck.write(row, col, F.relu(reduce(F.relu(stream))))  # (N, h)
            stream = stream + expand(F.relu(masked.at(bottleneck, row, col)))
        return self.head(stream)  # (N, C, levels)


MODEL = PixelCNN
