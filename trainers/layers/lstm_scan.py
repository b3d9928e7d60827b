"""PixelRNN's convolutional LSTM scan, and the skew that turns its diagonals into columns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def skew(x: Tensor) -> Tensor:
    """Shift row i of (B, C, H, W) right by i -> (B, C, H, W + H - 1), zeros elsewhere.

    Pixel (i, j) lands in column i + j, so its left neighbour (i, j - 1) and the pixel above it
    (i - 1, j) both sit in the previous column: a left-to-right scan over columns then walks the
    image one diagonal at a time (van den Oord et al. 2016, section 3.2, figure 3).
    """
    batch, channels, height, width = x.shape
    padded = F.pad(x, (0, height))  # (B, C, H, W + H)
    flat = padded.flatten(2)[:, :, : height * (width + height - 1)]  # row i now starts i later
    return flat.reshape(batch, channels, height, width + height - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """Inverse of `skew`: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    batch, channels, height, _ = x.shape
    flat = F.pad(x.flatten(2), (0, height))  # (B, C, H * (W + H))
    return flat.view(batch, channels, height, width + height)[..., :width]


def lstm_scan(input_gates: Tensor, state_to_state: nn.Module, hidden: int) -> Tensor:
    """Run a convolutional LSTM along the last axis of a map, one whole line of states per step.

    input_gates: (B, blocks * 4 * hidden, L, T) input-to-state pre-activations of every step,
    laid out as blocks (colour groups, directions), each holding the output, forget, input and
    candidate gates of `hidden` units. `state_to_state` maps the previous line of hidden states
    (B, blocks * hidden, L) to gate pre-activations (B, blocks * 4 * hidden, L); convolving along
    L is what turns a 1-D LSTM into the 2-D ones of sections 3.1 and 3.2.
    Returns the hidden states (B, blocks * hidden, L, T), block-major like the gates.
    """
    batch, gate_channels, length, _ = input_gates.shape
    blocks = gate_channels // (4 * hidden)
    state = input_gates.new_zeros(batch, blocks * hidden, length)
    cell = input_gates.new_zeros(batch, blocks, hidden, length)
    states = []
    for step_gates in input_gates.unbind(-1):
        gates = step_gates + state_to_state(state)  # (B, blocks * 4 * hidden, L)
        output, forget, write, candidate = gates.view(batch, blocks, 4, hidden, length).unbind(2)
        cell = torch.sigmoid(forget) * cell + torch.sigmoid(write) * torch.tanh(candidate)
        state = (torch.sigmoid(output) * torch.tanh(cell)).flatten(1, 2)  # (B, blocks*hidden, L)
        states.append(state)
    return torch.stack(states, dim=-1)
