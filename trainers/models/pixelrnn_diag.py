"""PixelRNN with Diagonal BiLSTM layers.

van den Oord, Kalchbrenner and Kavukcuoglu 2016, "Pixel Recurrent Neural Networks": the
Diagonal BiLSTM of section 3.2 (figure 3) inside the residual stack of section 3.4, masked for
colour as in section 3.5; the rest of the network is `PixelRNN` in `pixelrnn_row.py`. Paper:
3.00 bits/dim on CIFAR-10 test and 79.20 nats on binarized MNIST (tables 4 and 5). The loss is
the exact NLL of a `levels`-way softmax per sub-pixel, in nats per image (`nll_nats`), divided
by the sub-pixels per image (`loss`).

Each output reads every earlier sub-pixel but one: the 7x7 type-A input conv shows pixel
(i - 1, W - 1) to no feature of its own row, and to row i only at columns >= W - 4, so outputs
(i, j < W - 4) never see it, at any depth. The tests pin this field down exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.cached_sampling import IncrementalModel, PositionConv
from trainers.generative_model import ImageShape
from trainers.layers.lstm_scan import lstm_scan, skew, unskew
from trainers.layers.masked_conv import MaskedConv2d
from trainers.models.pixelrnn_row import PixelRNN, PixelRNNCaches


class DiagonalBiLSTM(nn.Module):
    """Two diagonal LSTMs, left-to-right and right-to-left, whose sum sees every earlier pixel.

    On the skewed map each diagonal is a column, so one column step updates a whole diagonal:
    input-to-state is a 1x1 conv (masked type B for colour), state-to-state a 2x1 conv over the
    previous column, which holds the pixel to the left and the pixel above. The right-to-left
    LSTM runs the same way on the mirrored map.
    """

    def __init__(self, in_channels: int, hidden: int, colour_groups: int) -> None:
        super().__init__()
        gate_channels = 4 * hidden * colour_groups
        self.hidden = hidden
        self.left_to_right_input = MaskedConv2d(in_channels, gate_channels, 1, "B", colour_groups)
        self.right_to_left_input = MaskedConv2d(in_channels, gate_channels, 1, "B", colour_groups)
        # Both directions scan together: one grouped conv, a 2x1 kernel per direction, padded
        # on top so state i reads previous-column states i - 1 and i.
        self.state_to_state = nn.Sequential(
            nn.ZeroPad1d((1, 0)),
            nn.Conv1d(2 * hidden * colour_groups, 2 * gate_channels, 2, groups=2),
        )

    def forward(self, features: Tensor) -> Tensor:
        left_to_right, right_to_left = self.directions(features)
        # The right-to-left state at (i, j) has read (i, j + 1) onwards in its own row; shifted
        # one row down it brings only rows above (section 3.2).
        from_row_above = F.pad(right_to_left, (0, 0, 1, 0))[:, :, :-1]  # (B, hidden * C, H, W)
        return left_to_right + from_row_above

    def directions(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """The left-to-right and right-to-left states (B, hidden * C, H, W), unshifted. Row i
        of both depends on rows <= i of `features` alone."""
        width = features.shape[-1]
        gates = torch.cat(
            [self.left_to_right_input(features), self.right_to_left_input(features.flip(-1))],
            dim=1,
        )  # (B, 2 * 4 * hidden * C, H, W)
        states = lstm_scan(skew(gates), self.state_to_state, self.hidden)  # (B, 2hC, H, W+H-1)
        left_to_right, mirrored = unskew(states, width).chunk(2, dim=1)  # (B, hidden * C, H, W)
        return left_to_right, mirrored.flip(-1)


class DiagonalPixelRNN(PixelRNN, IncrementalModel):
    """Samples with the left-to-right states computed pixel by pixel and the right-to-left
    ones a row at a time (`DiagonalLayerCache`)."""

    name = "pixelrnn_diag"
    lstm_layer = DiagonalBiLSTM

    def incremental(self, labels: Tensor) -> PixelRNNCaches:
        return PixelRNNCaches(self, DiagonalLayerCache, len(labels), labels.device)


class DiagonalLayerCache:
    """One Diagonal BiLSTM layer and its residual upsample, one pixel at a time, as far as its
    right-to-left pass allows.

    Left to right, a pixel's states need the states of its left neighbour and of the pixel
    above (the 2x1 state-to-state conv on the skewed map), so they are computed at the pixel.
    Right to left, a pixel's states need its right neighbour's, which comes later in raster
    order: a row's are ready only once the whole row is. The network reads them one row down,
    so the layer runs its right-to-left scan over the row above when a row starts: a pixel's
    right-to-left states are computed once, a row late; its left-to-right ones once per
    sub-pixel drawn there, as every other layer's values.
    """

    def __init__(
        self,
        lstm: DiagonalBiLSTM,
        upsample: MaskedConv2d,
        count: int,
        residual: int,
        shape: ImageShape,
        device: torch.device,
    ) -> None:
        self.width = shape.width
        self.left_to_right = DiagonalScan(lstm, 0, count, shape, device)
        self.right_to_left = DiagonalScan(lstm, 1, count, shape, device)
        self.left_to_right_input = PositionConv(lstm.left_to_right_input)
        self.right_to_left_input = PositionConv(lstm.right_to_left_input)
        self.upsample = PositionConv(upsample)
        self.inputs = torch.zeros(count, shape.width, residual, device=device)  # this row's
        states = lstm.state_to_state[1].in_channels // 2  # hidden * colour groups
        self.from_row_above = torch.zeros(count, states, shape.width, device=device)

    def start_row(self, row: int) -> None:
        if row > 0:  # the row above is final: scan it right to left, on its mirror image
            above = row - 1
            for mirrored_col in range(self.width):
                col = self.width - 1 - mirrored_col
                gates = self.right_to_left_input(self.inputs[:, col])
                state = self.right_to_left.step(above, above + mirrored_col, gates)
                self.from_row_above[:, :, col] = state

    def at(self, features: Tensor, row: int, col: int) -> Tensor:
        """The layer's residual output (N, residual) at (row, col) from its input there."""
        self.inputs[:, col] = features
        gates = self.left_to_right_input(features)
        state = self.left_to_right.step(row, row + col, gates) + self.from_row_above[:, :, col]
        return features + self.upsample(state)


class DiagonalScan:
    """One direction of a Diagonal BiLSTM layer, a state at a time, on the skewed map.

    Pixel (i, j) sits at skewed column i + j; its state reads the states at (i - 1, i + j - 1)
    (the pixel above) and (i, i + j - 1) (its left neighbour), through the direction's taps of
    the 2x1 state-to-state conv. The map has one row and one column of zeros in front: the
    zero state the scan starts from. Positions left of a row's pixels (columns < i) carry
    states too, grown from zero input-to-state gates, which pixel (i, 0) reads. Such a state
    reads only such states, so it is the same at column c in every row: each column's is
    computed once, here, and written into every row it is left of.
    """

    def __init__(
        self,
        lstm: DiagonalBiLSTM,
        direction: int,
        count: int,
        shape: ImageShape,
        device: torch.device,
    ) -> None:
        conv = lstm.state_to_state[1]  # grouped: group 0 left to right, group 1 right to left
        gate_channels = conv.out_channels // 2
        weight = conv.weight[direction * gate_channels : (direction + 1) * gate_channels]
        self.from_above = weight[:, :, 0].t()  # (hidden * C, gates): tap 0, the state above
        self.from_left = weight[:, :, 1].t()  # tap 1, the state beside it
        self.bias = conv.bias[direction * gate_channels : (direction + 1) * gate_channels]
        self.hidden = lstm.hidden
        states = conv.in_channels // 2  # hidden * colour groups
        self.blocks = states // lstm.hidden
        skewed = (shape.height + 1, shape.width + shape.height)
        self.state = torch.zeros(count, states, *skewed, device=device)
        self.cell = torch.zeros(count, self.blocks, lstm.hidden, *skewed, device=device)
        zero_gates = torch.zeros(count, gate_channels, device=device)
        for column in range(shape.height - 1):  # left of rows column + 1 and below
            self.step(column + 1, column, zero_gates)
            stored = column + 1  # the padded column; padded rows column + 3 on take it too
            self.state[:, :, column + 3 :, stored] = self.state[:, :, column + 2, stored, None]
            self.cell[..., column + 3 :, stored] = self.cell[..., column + 2, stored, None]

    def step(self, row: int, column: int, input_gates: Tensor) -> Tensor:
        """The state (N, hidden * C) at skewed (row, column), from the input-to-state gates
        there (N, 4 * hidden * C); stored for the states that read it."""
        above = self.state[:, :, row, column]  # padded: (row - 1, column - 1)
        beside = self.state[:, :, row + 1, column]  # padded: (row, column - 1)
        gates = (
            input_gates + torch.addmm(self.bias, above, self.from_above) + beside @ self.from_left
        )
        output, forget, write, candidate = gates.view(-1, self.blocks, 4, self.hidden).unbind(2)
        cell = torch.sigmoid(forget) * self.cell[..., row + 1, column] + torch.sigmoid(
            write
        ) * torch.tanh(candidate)  # (N, blocks, hidden)
        state = (torch.sigmoid(output) * torch.tanh(cell)).flatten(1)  # (N, blocks * hidden)
        self.cell[..., row + 1, column + 1] = cell
        self.state[:, :, row + 1, column + 1] = state
        return state


MODEL = DiagonalPixelRNN
