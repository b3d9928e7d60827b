"""PixelCNN++'s resolutions one row and one pixel at a time, for `cached_sample`.

Ramachandran et al. 2017 ("Fast Generation for Convolutional Autoregressive Models") on
Salimans et al. 2017's network (trainers/models/pixelcnn_pp.py). A resolution's u stream at
row i reads only rows above the pixel being drawn, so each of its rows is computed once, when
the row starts, by the model's own modules run on the three rows it reads. Its ul stream at
(i, j) reads only positions before (i, j), so each position is computed once, when (i, j) comes
up. A coarser resolution's row or position is computed as soon as the finer one it reads last
is (the stride-2 convolutions read fine rows 2a - 1 and 2a, columns up to 2b), and its
expanding pass hands back up the two fine rows or 2x2 fine positions it alone writes. Every
value is thus computed from final inputs only, when the full network would see them final.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from trainers.cached_sampling import FeatureCache, PositionConv
from trainers.generative_model import ImageShape
from trainers.layers.gated_resnet import GatedResnet, Resample, StreamBlock, concat_elu
from trainers.layers.shifted_conv import ShiftedConvTranspose2d

# Output row i of a u-stream gated resnet reads its input's rows i - 2 .. i (two 2-row kernels);
# a stride-2 down-sampling's coarse row a reads fine rows 2a - 1 .. 2a, and from 2a - 2 the
# stride keeps its phase.
ROWS_READ = 3


def rows_up_to(stream: Tensor, row: int) -> Tensor:
    """Rows row - 2 .. row of (N, F, H, W), fewer at the top where the convolutions pad."""
    return stream[:, :, max(0, row - ROWS_READ + 1) : row + 1]


def last_row(outputs: Tensor) -> Tensor:
    return outputs[:, :, -1]  # (N, F, W)


class PixelGatedResnet:
    """A down-right `GatedResnet` (the ul stream) at one position, reading its input's cache
    and its own hidden layer's; writes its output's."""

    def __init__(
        self,
        block: GatedResnet,
        labels: Tensor,
        shape: ImageShape,
        inputs: FeatureCache,
        outputs: FeatureCache,
    ) -> None:
        if block.shortcut is None:
            raise ValueError("a ul-stream gated resnet always reads the u stream as a shortcut")
        self.inputs, self.outputs = inputs, outputs
        self.hidden = FeatureCache(len(labels), shape.channels, shape, 1, labels.device)
        self.conv_in = PositionConv(block.conv_in)
        self.shortcut = PositionConv(block.shortcut)
        self.conv_out = PositionConv(block.conv_out)
        self.class_bias = None if block.class_bias is None else block.class_bias(labels)  # (N, 2F)

    def at(self, row: int, col: int, shortcut: Tensor) -> Tensor:
        """The block's output (N, F) at (row, col), given its shortcut input (N, S) there."""
        patch = concat_elu(self.conv_in.patch(self.inputs, row, col), dim=-1)  # (N, 2, 2, 2F)
        hidden = self.conv_in(patch.flatten(1)) + self.shortcut(concat_elu(shortcut))  # (N, F)
        self.hidden.write(row, col, hidden)
        patch = concat_elu(self.conv_out.patch(self.hidden, row, col), dim=-1)
        pre_gate = self.conv_out(patch.flatten(1))  # (N, 2F)
        if self.class_bias is not None:
            pre_gate = pre_gate + self.class_bias
        value, gate = pre_gate.chunk(2, dim=1)
        out = self.inputs.read(row, col) + value * torch.sigmoid(gate)
        self.outputs.write(row, col, out)
        return out


class PixelUpsample:
    """The ul stream's 2x2, stride-2 `ShiftedConvTranspose2d` from one coarse position to the
    2x2 fine positions it alone writes (kernel = stride, and down-right crops no columns)."""

    def __init__(self, deconv: ShiftedConvTranspose2d) -> None:
        if tuple(deconv.kernel_size) != (2, 2) or deconv.crop_left:
            raise ValueError(f"needs the ul stream's 2x2 up-sampling, got {deconv}")
        weight = deconv.weight  # (in, out, 2, 2)
        self.matrix = weight.permute(0, 2, 3, 1).flatten(1)  # (in, 2 * 2 * out)
        bias = weight.new_zeros(weight.shape[1]) if deconv.bias is None else deconv.bias
        self.bias = bias.repeat(4)

    def __call__(self, coarse: Tensor) -> Tensor:
        """(N, in) -> (N, 2, 2, out), channels last as a `FeatureCache` holds them."""
        return torch.addmm(self.bias, coarse, self.matrix).unflatten(1, (2, 2, -1))


@dataclass(frozen=True)
class Coarser:
    """The next resolution down and the two resamplings between it and this one."""

    downsample: Resample
    upsample: Resample
    caches: ResolutionCaches


class ResolutionCaches:
    """One resolution's stream blocks part way through the images, and the coarser ones below.

    Each stream keeps its contracting pass's input and block outputs (the skips its expanding
    pass reads, last first), its expanding pass's outputs and, above the coarsest, what the
    coarser resolution hands back up: u as full (N, F, H, W) tensors filled a row at a time,
    ul as `FeatureCache`s filled a position at a time.
    """

    def __init__(
        self,
        contracting: Sequence[StreamBlock],
        expanding: Sequence[StreamBlock],
        labels: Tensor,
        shape: ImageShape,
        coarser: Coarser | None,
    ) -> None:
        self.labels, self.coarser = labels, coarser
        self.contracting, self.expanding = list(contracting), list(expanding)
        count, device = len(labels), labels.device
        stream = partial(
            torch.zeros, count, shape.channels, shape.height, shape.width, device=device
        )
        cache = partial(FeatureCache, count, shape.channels, shape, 1, device)
        self.u_skips = [stream() for _ in range(len(contracting) + 1)]
        self.u_outputs = [stream() for _ in expanding]
        self.ul_skips = [cache() for _ in self.u_skips]
        self.ul_outputs = [cache() for _ in expanding]
        if coarser is None:
            # The coarsest expanding pass starts from the contracting pass's last output and
            # reads the skips before it (PixelCNNPP.logistic_params pops that one first).
            self.u_start, self.ul_start = self.u_skips[-1], self.ul_skips[-1]
            self.skip_order = list(reversed(range(len(contracting))))
        else:
            self.u_start, self.ul_start = stream(), cache()
            self.skip_order = list(reversed(range(len(contracting) + 1)))
            self.ul_down = PositionConv(coarser.downsample.ul_conv)
            self.ul_up = PixelUpsample(coarser.upsample.ul_conv)
        self.ul_contracting = [
            PixelGatedResnet(block.ul_block, labels, shape, inputs, outputs)
            for block, inputs, outputs in zip(
                contracting, self.ul_skips[:-1], self.ul_skips[1:], strict=True
            )
        ]
        self.ul_expanding = [
            PixelGatedResnet(block.ul_block, labels, shape, inputs, outputs)
            for block, inputs, outputs in zip(
                expanding, [self.ul_start, *self.ul_outputs[:-1]], self.ul_outputs, strict=True
            )
        ]

    def advance_row(self, row: int, entry: Tensor) -> None:
        """Row `row` (N, F, W) of the u stream entering this resolution is final: compute the
        row through both passes, and the coarser rows it makes final."""
        self.u_skips[0][:, :, row] = entry
        for block, inputs, outputs in zip(
            self.contracting, self.u_skips[:-1], self.u_skips[1:], strict=True
        ):
            outputs[:, :, row] = last_row(block.u_block(rows_up_to(inputs, row), self.labels))
        if self.coarser is not None and row % 2 == 0:
            coarse, half = self.coarser.caches, row // 2
            down = self.coarser.downsample.u_conv(rows_up_to(self.u_skips[-1], row))
            coarse.advance_row(half, last_row(down))
            # Kernel height = stride: coarse row a alone writes fine rows 2a and 2a + 1.
            coarse_out = coarse.u_outputs[-1][:, :, half : half + 1]
            self.u_start[:, :, row : row + 2] = self.coarser.upsample.u_conv(coarse_out)
        u = self.u_start
        for block, skip, outputs in zip(
            self.expanding, self.skip_order, self.u_outputs, strict=True
        ):
            skips = rows_up_to(self.u_skips[skip], row)
            outputs[:, :, row] = last_row(block.u_block(rows_up_to(u, row), self.labels, skips))
            u = outputs

    def advance_pixel(self, row: int, col: int, entry: Tensor) -> Tensor:
        """The ul stream entering this resolution is final at (row, col), (N, F): compute the
        position through both passes, and the coarser position it makes final. Returns the
        expanding pass's output (N, F) there."""
        self.ul_skips[0].write(row, col, entry)
        for block, u in zip(self.ul_contracting, self.u_skips[1:], strict=True):
            block.at(row, col, u[:, :, row, col])
        if self.coarser is not None and row % 2 == 0 and col % 2 == 0:
            coarse_entry = self.ul_down.at(self.ul_skips[-1], row, col)
            coarse_out = self.coarser.caches.advance_pixel(row // 2, col // 2, coarse_entry)
            self.ul_start.window(row, col, 2, 2).copy_(self.ul_up(coarse_out))
        for block, skip, u in zip(self.ul_expanding, self.skip_order, self.u_outputs, strict=True):
            shortcut = torch.cat([u[:, :, row, col], self.ul_skips[skip].read(row, col)], dim=1)
            out = block.at(row, col, shortcut)
        return out
