"""Sample grids: every tile where it belongs, grey padding between, levels mapped to 0..255."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from trainers.images import levels_to_png, tile


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_tiles_fill_rows_left_to_right_with_grey_padding_around_each() -> None:
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 3, 4) / 4  # image i is all i/4
    grid = tile(images, per_row=2)
    assert grid.shape == (3, 3 * 5 + 2, 2 * 6 + 2)  # 3 rows of 2, cells of 3+2 by 4+2
    for index in range(5):
        top, left = 2 + (index // 2) * 5, 2 + (index % 2) * 6
        assert torch.all(grid[:, top : top + 3, left : left + 4] == index / 4)
    assert torch.all(grid[:, :2, :] == 0.5) and torch.all(grid[:, :, :2] == 0.5)
    assert torch.all(grid[:, 12:, 8:] == 0.5)  # the empty sixth cell stays background


def test_png_is_rgb_with_small_images_enlarged_and_levels_spread_over_0_to_255() -> None:
    levels = torch.tensor([0, 16]).view(2, 1, 1, 1).expand(2, 1, 8, 8)  # black and white digits
    pixels = decode(levels_to_png(levels, levels=17))
    assert pixels.shape == (32 + 4, 2 * 34 + 2, 3)  # tiles of 8 enlarged 4x to 32
    assert (pixels[2:34, 2:34] == 0).all() and (pixels[2:34, 36:68] == 255).all()
    assert (pixels[0, 0] == 128).all()


def test_colour_channels_stay_apart() -> None:
    image = torch.zeros(1, 3, 32, 32, dtype=torch.long)
    image[0, 0] = 255  # red
    pixels = decode(levels_to_png(image, levels=256))
    assert tuple(pixels[10, 10]) == (255, 0, 0)
