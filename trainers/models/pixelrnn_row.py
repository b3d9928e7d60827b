"""PixelRNN with Row LSTM layers, and the network both PixelRNNs share.

van den Oord, Kalchbrenner and Kavukcuoglu 2016, "Pixel Recurrent Neural Networks": the Row
LSTM of section 3.1 inside the residual stack of section 3.4, masked for colour as in section
3.5 (figures 2 and 4). Paper: 3.07 bits/dim on CIFAR-10 test and 80.54 nats on binarized
MNIST (tables 4 and 5). The loss is the exact NLL of a `levels`-way softmax per sub-pixel, in
nats per image (`nll_nats`), divided by the sub-pixels per image (`loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from jobs.model_params import PixelRNNParams
from trainers.cached_sampling import FeatureCache, IncrementalModel, PositionConv, PositionHead
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.heads import SubpixelLogitHead
from trainers.layers.lstm_scan import lstm_scan
from trainers.layers.masked_conv import MaskedConv2d
from trainers.likelihood import categorical_nll
from trainers.sampling import AutoregressiveModel, softmax_pixel


class PixelRNN(AutoregressiveModel):
    """Masked 7x7 type-A conv, `layers` residual LSTM layers, two masked 1x1 convs to logits
    (section 3.5, figure 4).

    Every feature map is split into colour groups (R, G, B) laid out one after another along
    the channels, the layout `MaskedConv2d` masks by; a group at pixel (i, j) may read earlier
    pixels and the colours before it at (i, j), never its own colour or anything later.
    Subclasses choose the LSTM layer: `lstm_layer(in_channels, hidden, colour_groups)` maps
    (B, in, H, W) to hidden states (B, colour_groups * hidden, H, W) in the same colour layout.
    """

    lstm_layer: ClassVar[type[nn.Module]]

    def __init__(self, params: PixelRNNParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        groups = shape.channels
        # Section 3.4: the residual stream has 2h features, each LSTM reads them and writes h
        # that a 1x1 conv brings back to 2h before the addition.
        residual = 2 * params.hidden * groups
        self.input_conv = MaskedConv2d(groups, residual, 7, "A", groups)
        self.lstms = nn.ModuleList(
            self.lstm_layer(residual, params.hidden, groups) for _ in range(params.layers)
        )
        self.upsamples = nn.ModuleList(
            MaskedConv2d(params.hidden * groups, residual, 1, "B", groups)
            for _ in range(params.layers)
        )
        self.head = SubpixelLogitHead(residual, params.output_hidden, groups, shape.levels)

    def logits(self, inputs: Tensor) -> Tensor:
        """Floats (B, C, H, W) in [-1, 1] -> logits (B, C, levels, H, W), causal in raster order."""
        features = self.input_conv(inputs)  # (B, 2 * hidden * C, H, W)
        for lstm, upsample in zip(self.lstms, self.upsamples, strict=True):
            features = features + upsample(lstm(features))
        return self.head(features)

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del labels, phase
        nll_nats = categorical_nll(self.logits(to_unit_range(images, self.shape.levels)), images)
        return {"loss": nll_nats / self.shape.dims, "nll_nats": nll_nats}

    def sample_pixel(
        self, images: Tensor, labels: Tensor, row: int, col: int, noise: Tensor
    ) -> Tensor:
        del labels
        levels = self.shape.levels
        return softmax_pixel(
            lambda rows: self.logits(to_unit_range(rows, levels)), images, row, col, noise
        )


class RowLSTM(nn.Module):
    """Section 3.1: rows top to bottom, each row of states computed at once by convolutions.

    Input-to-state is a 1x3 conv masked so a pixel reads only itself (colour groups <= its own)
    and its left neighbour; state-to-state is an unmasked 1x3 conv over the previous row's
    states, which are all earlier pixels. The context is the triangle above each pixel.
    """

    def __init__(self, in_channels: int, hidden: int, colour_groups: int) -> None:
        super().__init__()
        gate_channels = 4 * hidden * colour_groups
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(in_channels, gate_channels, (1, 3), "B", colour_groups)
        self.state_to_state = nn.Conv1d(hidden * colour_groups, gate_channels, 3, padding=1)

    def forward(self, features: Tensor) -> Tensor:
        gates = self.input_to_state(features).transpose(2, 3)  # (B, 4 * hidden * C, W, H)
        states = lstm_scan(gates, self.state_to_state, self.hidden)  # (B, hidden * C, W, H)
        return states.transpose(2, 3)


class RowPixelRNN(PixelRNN, IncrementalModel):
    """Samples pixel by pixel with each layer's states of the row above kept
    (`RowLSTMLayerCache`)."""

    name = "pixelrnn_row"
    lstm_layer = RowLSTM

    def incremental(self, labels: Tensor) -> PixelRNNCaches:
        return PixelRNNCaches(self, RowLSTMLayerCache, len(labels), labels.device)


class LayerCache(Protocol):
    """One LSTM layer of a PixelRNN and its residual upsample, one pixel at a time."""

    def start_row(self, row: int) -> None:
        """Rows above `row` are final."""

    def at(self, features: Tensor, row: int, col: int) -> Tensor:
        """The layer's residual output (N, residual) at (row, col) from its input there."""


class PixelRNNCaches:
    """A PixelRNN one pixel at a time: the 7x7 input conv on the image cache, then each
    layer's cache (`layer_cache`, for the model's kind of LSTM), then the head."""

    def __init__(
        self,
        model: PixelRNN,
        layer_cache: Callable[..., LayerCache],
        count: int,
        device: torch.device,
    ) -> None:
        shape = model.shape
        kernel = model.input_conv.kernel_size[0]
        self.image = FeatureCache(count, shape.channels, shape, kernel // 2, device)
        self.input_conv = PositionConv(model.input_conv)
        residual = model.input_conv.out_channels
        self.layers = [
            layer_cache(lstm, upsample, count, residual, shape, device)
            for lstm, upsample in zip(model.lstms, model.upsamples, strict=True)
        ]
        self.head = PositionHead(model.head)

    def start_row(self, row: int) -> None:
        for layer in self.layers:
            layer.start_row(row)

    def logits_at(self, row: int, col: int) -> Tensor:
        features = self.input_conv.at(self.image, row, col)  # (N, residual)
        for layer in self.layers:
            features = layer.at(features, row, col)
        return self.head(features)  # (N, C, levels)


class RowLSTMLayerCache:
    """One Row LSTM layer and its residual upsample (PixelRNN.logits) at one pixel at a time.

    A pixel's states need the layer's states of the row above (three of them, by the
    state-to-state conv) and the layer's input at the pixel and its left neighbour (the 1x3
    input-to-state conv). So the layer keeps the row above's hidden and cell states and runs
    its state-to-state conv over them once per row; everything else is computed at the pixel.
    """

    def __init__(
        self,
        lstm: RowLSTM,
        upsample: MaskedConv2d,
        count: int,
        residual: int,
        shape: ImageShape,
        device: torch.device,
    ) -> None:
        self.hidden = lstm.hidden
        self.input_to_state = PositionConv(lstm.input_to_state)
        self.state_to_state = lstm.state_to_state
        self.upsample = PositionConv(upsample)
        self.inputs = FeatureCache(count, residual, shape, 1, device)  # the 1x3 conv reads these
        states = lstm.state_to_state.in_channels  # hidden * colour groups
        self.blocks = states // lstm.hidden
        # The current row's states; zeros before the first row, as in `lstm_scan`.
        self.state = torch.zeros(count, states, shape.width, device=device)
        self.cell = torch.zeros(count, self.blocks, lstm.hidden, shape.width, device=device)
        self.cell_above: Tensor  # the row above's, and its states through state_to_state:
        self.from_above: Tensor  # both set by start_row, which comes before every row

    def start_row(self, row: int) -> None:
        """The row computed so far becomes the row above."""
        del row  # the layer moves on from the row it last computed
        self.from_above = self.state_to_state(self.state)  # (N, blocks * 4 * hidden, W)
        self.cell_above = self.cell
        self.state = torch.zeros_like(self.state)
        self.cell = torch.zeros_like(self.cell)

    def at(self, features: Tensor, row: int, col: int) -> Tensor:
        """The layer's residual output (N, residual) at (row, col) from its input there."""
        self.inputs.write(row, col, features)
        gates = self.input_to_state.at(self.inputs, row, col) + self.from_above[:, :, col]
        output, forget, write, candidate = gates.view(-1, self.blocks, 4, self.hidden).unbind(2)
        cell = torch.sigmoid(forget) * self.cell_above[..., col] + torch.sigmoid(
            write
        ) * torch.tanh(candidate)  # (N, blocks, hidden)
        state = (torch.sigmoid(output) * torch.tanh(cell)).flatten(1)  # (N, blocks * hidden)
        self.cell[..., col] = cell
        self.state[..., col] = state
        return features + self.upsample(state)


MODEL = RowPixelRNN
