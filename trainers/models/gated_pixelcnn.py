"""Gated PixelCNN: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves and Kavukcuoglu 2016,
"Conditional Image Generation with PixelCNN Decoders" (NIPS 2016).

What this file follows (sections 2.1-2.3, figure 2): every layer has a vertical stack, whose
output at row i has seen rows <= i, and a horizontal stack, whose output at (i, j) has seen the
pixels left of it in row i. The vertical stack reaches the horizontal one only through a
down-shift and a 1x1 convolution, so together they see every earlier pixel and no later one:
no blind spot. Both stacks use gated units tanh(a) * sigmoid(b) (equation 2); the horizontal
stack is residual after its first layer. With `params.conditional` each layer adds a learned
bias per class to the pre-activations of both stacks (section 2.3, equation 4 with a one-hot
h). Within the current pixel the horizontal stack masks colours R -> G -> B as PixelCNN does,
and two masked 1x1 convolutions give a `levels`-way softmax per sub-pixel.
Headline: 3.03 bits/dim on CIFAR-10 test (table 1).

Loss: the exact NLL of the softmaxes in nats per image (`nll_nats`), divided by the sub-pixels
per image for `loss` so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.cached_sampling import FeatureCache, IncrementalModel, PositionConv, PositionHead
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.heads import SubpixelLogitHead, gated_activation
from trainers.layers.masked_conv import MaskedConv2d
from trainers.layers.shifted_conv import ShiftedConv2d, down_shift
from trainers.likelihood import categorical_nll
from trainers.sampling import softmax_pixel

if TYPE_CHECKING:  # see trainers/generative_model.py
    from jobs.model_params import GatedPixelCNNParams


class GatedLayer(nn.Module):
    """One layer of figure 2 with `width` gated features per stack.

    The first layer reads the image in both stacks; its horizontal convolution is masked type A
    (a sub-pixel never sees itself) and it has no residual connection.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        kernel: int,
        colour_groups: int,
        num_classes: int | None,
        first: bool,
    ) -> None:
        super().__init__()
        self.width = width
        self.colour_groups = colour_groups
        self.residual = not first
        self.vertical_conv = ShiftedConv2d(
            in_channels, 2 * width, (kernel // 2 + 1, kernel), "down"
        )
        self.horizontal_conv = MaskedConv2d(
            in_channels, 2 * width, (1, kernel), "A" if first else "B", colour_groups
        )
        self.vertical_to_horizontal = nn.Conv2d(2 * width, 2 * width, 1)
        self.horizontal_out = MaskedConv2d(width, width, 1, "B", colour_groups)
        self.class_bias = None if num_classes is None else nn.Embedding(num_classes, 4 * width)

    def gate_biases(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Biases (N, 2 * width) of the vertical and horizontal gates for each image's class."""
        if self.class_bias is None:
            zeros = torch.zeros(len(labels), 2 * self.width, device=labels.device)
            return zeros, zeros
        vertical, horizontal = self.class_bias(labels).chunk(2, dim=1)
        return vertical, horizontal

    def forward(
        self, vertical: Tensor, horizontal: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        vertical_bias, horizontal_bias = self.gate_biases(labels)
        vertical_pre = self.vertical_conv(vertical)  # (B, 2F, H, W): row i has seen rows <= i
        # Shifted down, the vertical stack brings row i only rows < i: it has seen pixels right
        # of (i, j) in row i, which the horizontal stack must not.
        horizontal_pre = self.horizontal_conv(horizontal) + self.vertical_to_horizontal(
            down_shift(vertical_pre)
        )  # (B, 2F, H, W)
        vertical_out = gated_activation(vertical_pre + vertical_bias[:, :, None, None], 1)
        gated = gated_activation(
            horizontal_pre + horizontal_bias[:, :, None, None], self.colour_groups
        )  # (B, F, H, W)
        horizontal_out = self.horizontal_out(gated)
        if self.residual:
            horizontal_out = horizontal_out + horizontal
        return vertical_out, horizontal_out


class GatedPixelCNN(IncrementalModel):
    name: ClassVar[str] = "gated_pixelcnn"

    def __init__(self, params: GatedPixelCNNParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        groups = shape.channels
        width = params.channels * groups  # `params.channels` features per colour group
        classes = num_classes if params.conditional else None
        self.layers = nn.ModuleList(
            GatedLayer(
                groups if index == 0 else width, width, params.kernel, groups, classes, index == 0
            )
            for index in range(params.layers)
        )
        self.head = SubpixelLogitHead(width, params.output_hidden, groups, shape.levels)

    def logits(self, images: Tensor, labels: Tensor) -> Tensor:
        """Levels (B, C, H, W) -> logits (B, C, levels, H, W), causal in raster order."""
        vertical = horizontal = to_unit_range(images, self.shape.levels)  # (B, C, H, W)
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal, labels)
        return self.head(horizontal)

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del phase
        nll_nats = categorical_nll(self.logits(images, labels), images)  # (B,)
        return {"loss": nll_nats / self.shape.dims, "nll_nats": nll_nats}

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        return softmax_pixel(lambda rows: self.logits(rows, labels), images, row, col, noise)

    def incremental(self, labels: Tensor) -> GatedPixelCNNCaches:
        return GatedPixelCNNCaches(self, labels)


class GatedLayerCaches:
    """A `GatedLayer` part way through the images: its vertical stack advances a row at a time,
    once the row is final, its horizontal stack a pixel at a time."""

    def __init__(
        self,
        layer: GatedLayer,
        labels: Tensor,
        image_width: int,
        inputs: tuple[FeatureCache, FeatureCache],
        outputs: tuple[FeatureCache, FeatureCache] | None,
    ) -> None:
        self.layer = layer
        self.vertical_in, self.horizontal_in = inputs
        self.outputs = outputs  # None for the last layer, whose outputs go to the head
        self.vertical_bias, self.horizontal_bias = layer.gate_biases(labels)  # (N, 2F) each
        self.horizontal_conv = PositionConv(layer.horizontal_conv)
        self.horizontal_out = PositionConv(layer.horizontal_out)
        # What the vertical stack passes down to the current row; down_shift gives row 0 zeros.
        above_first_row = torch.zeros(
            len(labels), 2 * layer.width, 1, image_width, device=labels.device
        )
        self.from_above = self._passed_down(above_first_row)  # (N, 2F, W)

    def _passed_down(self, vertical_pre: Tensor) -> Tensor:
        return self.layer.vertical_to_horizontal(vertical_pre)[:, :, 0]  # (N, 2F, W)

    def finish_row(self, row: int) -> None:
        """Run the vertical stack over `row`, all of whose inputs are final, for row + 1."""
        conv = self.layer.vertical_conv
        left, right, top, _ = conv.causal_padding
        image_width = self.from_above.shape[-1]
        window = self.vertical_in.window(row - top, -left, top + 1, left + image_width + right)
        vertical_pre = F.conv2d(window.permute(0, 3, 1, 2), conv.weight, conv.bias)  # (N, 2F, 1, W)
        self.from_above = self._passed_down(vertical_pre)
        if self.outputs is not None:
            vertical_out = gated_activation(vertical_pre + self.vertical_bias[:, :, None, None], 1)
            self.outputs[0].write_row(row, vertical_out[:, :, 0])  # (N, F, W)

    def horizontal_at(self, row: int, col: int) -> Tensor:
        """The horizontal stack's output (N, F) at (row, col), cached for the next layer."""
        pre = self.horizontal_conv.at(self.horizontal_in, row, col) + self.from_above[:, :, col]
        gated = gated_activation(pre + self.horizontal_bias, self.layer.colour_groups)  # (N, F)
        out = self.horizontal_out(gated)
        if self.layer.residual:
            out = out + self.horizontal_in.read(row, col)
        if self.outputs is not None:
            self.outputs[1].write(row, col, out)
        return out


class GatedPixelCNNCaches:
    """Gated PixelCNN one pixel at a time: both stacks' inputs cached for every layer."""

    def __init__(self, model: GatedPixelCNN, labels: Tensor) -> None:
        shape, count, device = model.shape, len(labels), labels.device
        border = model.params.kernel // 2
        width = model.params.channels * shape.channels
        self.image = FeatureCache(count, shape.channels, shape, border, device)
        hidden_cache = partial(FeatureCache, count, width, shape, border, device)
        # (vertical, horizontal) inputs of each layer: the image, then the layer below's outputs.
        inputs = [(self.image, self.image)]
        inputs += [(hidden_cache(), hidden_cache()) for _ in model.layers[1:]]
        outputs = [*inputs[1:], None]
        self.layers = [
            GatedLayerCaches(layer, labels, shape.width, layer_inputs, layer_outputs)
            for layer, layer_inputs, layer_outputs in zip(
                model.layers, inputs, outputs, strict=True
            )
        ]
        self.head = PositionHead(model.head)

    def start_row(self, row: int) -> None:
        if row > 0:
            for layer in self.layers:
                layer.finish_row(row - 1)

    def logits_at(self, row: int, col: int) -> Tensor:
        for layer in self.layers:
            features = layer.horizontal_at(row, col)  # (N, F)
        return self.head(features)  # (N, C, levels)


MODEL = GatedPixelCNN
