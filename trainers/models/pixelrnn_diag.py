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

from trainers.layers import MaskedConv2d, lstm_scan, skew, unskew
from trainers.models.pixelrnn_row import PixelRNN


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
        width = features.shape[-1]
        gates = torch.cat(
            [self.left_to_right_input(features), self.right_to_left_input(features.flip(-1))],
            dim=1,
        )  # (B, 2 * 4 * hidden * C, H, W)
        states = lstm_scan(skew(gates), self.state_to_state, self.hidden)  # (B, 2hC, H, W+H-1)
        left_to_right, mirrored = unskew(states, width).chunk(2, dim=1)  # (B, hidden * C, H, W)
        # The right-to-left state at (i, j) has read (i, j + 1) onwards in its own row; shifted
        # one row down it brings only rows above (section 3.2).
        right_to_left = mirrored.flip(-1)
        from_row_above = F.pad(right_to_left, (0, 0, 1, 0))[:, :, :-1]  # (B, hidden * C, H, W)
        return left_to_right + from_row_above


class DiagonalPixelRNN(PixelRNN):
    name = "pixelrnn_diag"
    lstm_layer = DiagonalBiLSTM


MODEL = DiagonalPixelRNN
