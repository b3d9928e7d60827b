"""Convolutional autoencoder, after Hinton & Salakhutdinov (2006).

"Reducing the dimensionality of data with neural networks", Science 313: a deep encoder maps
an image to a small code and a mirrored decoder maps it back, trained on squared
reconstruction error (figure 1; their MNIST net is 784-1000-500-250-30 and, in figure 2, beats
30-dimensional PCA: 3.00 against 13.87 average squared error per test image). Here both halves
are strided convolutions (`ConvEncoder` / `ConvDecoder`) around a `latent_dim` code.

The loss is the per-image mean squared error over sub-pixels in [-1, 1] units. It is not a
likelihood, so no `nll_nats` (and no bits/dim) is reported; `psnr_db` is the peak
signal-to-noise ratio for that range (peak-to-peak 2).

An autoencoder is not a generative model: it defines no distribution over images. `sample`
decodes Gaussian codes with the per-dimension mean and std of the training codes (running
averages kept in buffers), and its pictures are only illustrative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jobs.model_params import AutoencoderParams
from trainers.generative_model import (
    GenerativeModel,
    ImageShape,
    to_unit_range,
    unit_range_to_levels,
)
from trainers.layers.encoder_decoder import ConvDecoder, ConvEncoder

# Weight of each new batch in the running code statistics.
CODE_STATS_MOMENTUM = 0.05


class Autoencoder(GenerativeModel):
    name = "autoencoder"
    objective = "reconstruction"

    code_mean: Tensor
    code_std: Tensor

    def __init__(self, params: AutoencoderParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        height, width = shape.height, shape.width
        self.encoder = ConvEncoder(
            shape.channels, height, width, params.channels, params.latent_dim, batchnorm=False
        )
        self.decoder = ConvDecoder(
            params.latent_dim, params.channels, shape.channels, height, width, batchnorm=False
        )
        self.register_buffer("code_mean", torch.zeros(params.latent_dim))
        self.register_buffer("code_std", torch.ones(params.latent_dim))

    def decode(self, codes: Tensor) -> Tensor:
        return torch.tanh(self.decoder(codes))  # (B, C, H, W) in [-1, 1]

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del labels, phase
        targets = to_unit_range(images, self.shape.levels)  # (B, C, H, W)
        codes = self.encoder(targets)  # (B, latent_dim)
        if self.training:
            self._track_code_statistics(codes.detach())
        squared_error = (self.decode(codes) - targets).pow(2).flatten(1).mean(dim=1)  # (B,)
        psnr_db = 10.0 * torch.log10(4.0 / squared_error.detach().clamp_min(1e-10))
        return {"loss": squared_error, "mse": squared_error.detach(), "psnr_db": psnr_db}

    @torch.no_grad()
    def _track_code_statistics(self, codes: Tensor) -> None:
        self.code_mean.lerp_(codes.mean(dim=0), CODE_STATS_MOMENTUM)
        self.code_std.lerp_(codes.std(dim=0, correction=0), CODE_STATS_MOMENTUM)

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(len(labels), self.params.latent_dim, generator=generator)
        codes = self.code_mean + self.code_std * noise.to(labels.device)  # (N, latent_dim)
        return unit_range_to_levels(self.decode(codes), self.shape.levels)

    @torch.no_grad()
    def visuals(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        del labels, generator
        codes = self.encoder(to_unit_range(images, self.shape.levels))
        reconstructions = unit_range_to_levels(self.decode(codes), self.shape.levels)
        return {"reconstructions": torch.cat([images, reconstructions])}


MODEL = Autoencoder
