"""Image grids as PNG bytes, from integer levels."""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

# 8x8 digits would make a grid of 64 samples 80 pixels wide; tiles are enlarged (nearest
# neighbour, so levels stay crisp) until they are at least this many pixels on a side.
MIN_TILE_PIXELS = 32


def levels_to_png(images: Tensor, levels: int, nrow: int | None = None) -> bytes:
    """A grid of images (N, C, H, W) in [0, levels) as an 8-bit PNG, `nrow` images per row."""
    scale = max(1, math.ceil(MIN_TILE_PIXELS / images.shape[-1]))
    unit = images.detach().cpu().float() / (levels - 1)  # (N, C, H, W) in [0, 1]
    unit = unit.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    per_row = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(unit, nrow=per_row, padding=2, pad_value=0.5)  # (3, H', W')
    pixels = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
