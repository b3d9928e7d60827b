"""Image grids as PNG bytes, from integer levels."""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torch import Tensor

# 8x8 digits would make a grid of 64 samples 80 pixels wide; tiles are enlarged (nearest
# neighbour, so levels stay crisp) until they are at least this many pixels on a side.
MIN_TILE_PIXELS = 32
PADDING_PIXELS = 2
PADDING_GREY = 0.5  # between black and white, so tiles of either stand apart


def levels_to_png(images: Tensor, levels: int, nrow: int | None = None) -> bytes:
    """A grid of images (N, C, H, W) in [0, levels) as an 8-bit RGB PNG, `nrow` images per row."""
    scale = max(1, math.ceil(MIN_TILE_PIXELS / images.shape[-1]))
    unit = images.detach().cpu().float() / (levels - 1)  # (N, C, H, W) in [0, 1]
    unit = unit.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = tile(unit, per_row=nrow or math.ceil(math.sqrt(len(images))))  # (3, H', W')
    pixels = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tile(images: Tensor, per_row: int) -> Tensor:
    """Lay images (N, C, H, W), C 1 or 3, out in rows on a grey background: (3, H', W').

    Written here rather than taken from torchvision, whose import (1.7 s) every Ray Train
    worker would pay before its first step.
    """
    count, _, height, width = images.shape
    columns = min(per_row, count)
    rows = math.ceil(count / columns)
    cell_height, cell_width = height + PADDING_PIXELS, width + PADDING_PIXELS
    grid = torch.full(
        (3, rows * cell_height + PADDING_PIXELS, columns * cell_width + PADDING_PIXELS),
        PADDING_GREY,
    )
    for index, image in enumerate(images.expand(-1, 3, -1, -1)):  # grey: one channel to three
        top = (index // columns) * cell_height + PADDING_PIXELS
        left = (index % columns) * cell_width + PADDING_PIXELS
        grid[:, top : top + height, left : left + width] = image
    return grid
