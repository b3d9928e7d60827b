"""DCGAN-style strided convolutional encoder and decoder (autoencoder, VAE, DCGAN)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def downsampling_stages(height: int, width: int) -> int:
    """Stride-2 stages that take an image, zero-padded to a square, down to a 4x4 map.

    One for 8x8 digits (side 8), three for 28x28 MNIST and 32x32 CIFAR-10 (side 32).
    """
    stages = 1
    while 4 * 2**stages < max(height, width):
        stages += 1
    return stages


def _margins(side: int, size: int) -> tuple[int, int]:
    """Padding before and after `size` that centres it in `side`."""
    before = (side - size) // 2
    return before, side - size - before


class ConvEncoder(nn.Module):
    """Image floats (B, C, H, W) -> features (B, out_features): DCGAN-style strided convs.

    Zero-pads to a square whose side halves exactly down to 4, halves it with 4x4 stride-2
    convolutions (no pooling; Radford et al. 2016, section 3) while doubling the width from
    `channels`, then maps the 4x4 map linearly to `out_features`. LeakyReLU(0.2) throughout;
    with `batchnorm`, every conv but the first is batch-normalised (the DCGAN discriminator
    leaves its input layer unnormalised).
    """

    def __init__(
        self,
        image_channels: int,
        height: int,
        width: int,
        channels: int,
        out_features: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        stages = downsampling_stages(height, width)
        side = 4 * 2**stages
        self.padding = (*_margins(side, width), *_margins(side, height))  # left right top bottom
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for stage in range(1, stages):
            width_in, width_out = channels * 2 ** (stage - 1), channels * 2**stage
            layers.append(nn.Conv2d(width_in, width_out, 4, 2, 1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width_out))
            layers.append(nn.LeakyReLU(0.2))
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 2 ** (stages - 1) * 4 * 4, out_features)

    def forward(self, images: Tensor) -> Tensor:
        padded = F.pad(images, self.padding)  # (B, C, S, S)
        return self.head(self.convs(padded).flatten(1))  # (B, out_features)


class ConvDecoder(nn.Module):
    """Vector (B, in_features) -> map (B, out_channels, H, W): the mirror of ConvEncoder.

    A linear projection to a 4x4 map, 4x4 stride-2 transposed convolutions that double the side
    and halve the width down to `channels`, a last one to `out_channels`, and a centre crop to
    H x W. ReLU between layers; with `batchnorm`, every layer but the output is
    batch-normalised (the DCGAN generator). The output has no activation: callers apply tanh
    or read it as logits.
    """

    def __init__(
        self,
        in_features: int,
        channels: int,
        out_channels: int,
        height: int,
        width: int,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        stages = downsampling_stages(height, width)
        side = 4 * 2**stages
        self.top_channels = channels * 2 ** (stages - 1)
        self.crop = (_margins(side, height)[0], _margins(side, width)[0], height, width)
        self.project = nn.Linear(in_features, self.top_channels * 4 * 4, bias=not batchnorm)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.top_channels)] if batchnorm else []
        layers.append(nn.ReLU())
        for stage in reversed(range(1, stages)):
            width_in, width_out = channels * 2**stage, channels * 2 ** (stage - 1)
            layers.append(nn.ConvTranspose2d(width_in, width_out, 4, 2, 1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width_out))
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(channels, out_channels, 4, 2, 1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        top, left, height, width = self.crop
        grid = self.project(features).view(-1, self.top_channels, 4, 4)  # (B, C', 4, 4)
        full = self.deconvs(grid)  # (B, out_channels, S, S)
        return full[:, :, top : top + height, left : left + width]  # (B, out_channels, H, W)
