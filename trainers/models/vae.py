"""Variational autoencoder (Kingma & Welling 2014), convolutional, with an exact discrete decoder.

"Auto-Encoding Variational Bayes", ICLR 2014: a Gaussian encoder q(z|x) = N(mu(x), sigma(x)^2)
and a decoder p(x|z) under a N(0, I) prior, trained on the SGVB estimator of the ELBO with the
KL term in closed form (section 2.3, eq. 10; appendix B) and the reparameterization
z = mu + sigma * eps (section 2.4). Headline: Burda et al. 2016 ("Importance Weighted
Autoencoders", table 1) report 86.76 nats test NLL on binarized MNIST for a one-stochastic-layer
VAE, measured with the k = 5000 importance-weighted bound.

p(x|z) is a Bernoulli per sub-pixel for 2-level data (the paper's appendix C.1 decoder) and
otherwise a softmax over all `levels` values of each sub-pixel (the discretized 256-level
decoder), so that the likelihood is exact over the data's own values and its bits/dim compare
with the autoregressive models'.

The loss is the negative ELBO in nats per image (`neg_elbo_nats` = `recon_nats` + `kl_nats`)
divided by the sub-pixel count. `evaluate` adds `nll_nats`: the importance-weighted bound
(Burda et al. 2016, eq. 8) with k = `iw_samples` (`iw_samples_final` at the last evaluation),
an upper bound on the true NLL that is never looser than the ELBO on average.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jobs.model_params import VAEParams
from trainers.generative_model import GenerativeModel, ImageShape, to_unit_range
from trainers.layers.encoder_decoder import ConvDecoder, ConvEncoder
from trainers.likelihood import bernoulli_nll, categorical_nll, sample_categorical

# Decoder logits one chunk of importance samples may hold (64 MiB of float32), so that k = 1000
# or 5000 fits in memory for any batch.
LOGITS_PER_CHUNK = 2**24
# Interpolation rows, and steps per row: a square grid, so a square layout puts one walk per row.
INTERPOLATION_STEPS = 8


def uses_bernoulli(decoder: str, levels: int) -> bool:
    if decoder == "bernoulli" and levels != 2:
        raise ValueError(
            f"model.params.decoder: bernoulli needs 2-level data, got levels={levels}; "
            "use categorical or auto"
        )
    return decoder == "bernoulli" or (decoder == "auto" and levels == 2)


class VAE(GenerativeModel):
    name = "vae"
    objective = "elbo"

    def __init__(self, params: VAEParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        self.bernoulli = uses_bernoulli(params.decoder, shape.levels)
        self.outputs_per_subpixel = 1 if self.bernoulli else shape.levels
        height, width, latent = shape.height, shape.width, params.latent_dim
        self.encoder = ConvEncoder(
            shape.channels, height, width, params.channels, 2 * latent, batchnorm=False
        )
        out_channels = shape.channels * self.outputs_per_subpixel
        self.decoder = ConvDecoder(
            latent, params.channels, out_channels, height, width, batchnorm=False
        )

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance, (B, latent_dim) each, of q(z|x)."""
        mean, log_var = self.encoder(to_unit_range(images, self.shape.levels)).chunk(2, dim=1)
        return mean, log_var

    def decoder_logits(self, codes: Tensor) -> Tensor:
        """p(x|z) logits: (B, C, H, W) Bernoulli, or (B, C, levels, H, W) categorical."""
        logits = self.decoder(codes)  # (B, C * outputs_per_subpixel, H, W)
        if self.bernoulli:
            return logits
        shape = self.shape
        return logits.view(-1, shape.channels, shape.levels, shape.height, shape.width)

    def reconstruction_nll(self, codes: Tensor, images: Tensor) -> Tensor:
        """-log p(x|z) in nats per image, (B,)."""
        logits = self.decoder_logits(codes)
        if self.bernoulli:
            return bernoulli_nll(logits, images)
        return categorical_nll(logits, images)

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del labels, phase
        mean, log_var = self.posterior(images)
        codes = mean + (0.5 * log_var).exp() * torch.randn_like(mean)  # (B, latent_dim)
        recon_nats = self.reconstruction_nll(codes, images)  # (B,)
        kl_nats = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)  # (B,)
        neg_elbo_nats = recon_nats + kl_nats
        return {
            "loss": neg_elbo_nats / self.shape.dims,
            "neg_elbo_nats": neg_elbo_nats.detach(),
            "kl_nats": kl_nats.detach(),
            "recon_nats": recon_nats.detach(),
        }

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor, final: bool = False) -> dict[str, Tensor]:
        metrics = {key: value.detach() for key, value in self(images, labels).items()}
        metrics["nll_nats"] = self.importance_weighted_nll(images, self.importance_samples(final))
        return metrics

    def importance_samples(self, final: bool) -> int:
        return self.params.iw_samples_final if final else self.params.iw_samples

    @torch.no_grad()
    def importance_weighted_nll(self, images: Tensor, samples: int) -> Tensor:
        """-log (1/k sum_i p(x, z_i) / q(z_i|x)), z_i ~ q(z|x), in nats per image (B,).

        The k log-weights are computed a chunk of samples at a time so the decoder never holds
        more than LOGITS_PER_CHUNK logits, and combined once with logsumexp.
        """
        mean, log_var = self.posterior(images)
        std = (0.5 * log_var).exp()
        batch = len(images)
        chunk = max(1, LOGITS_PER_CHUNK // (batch * self.shape.dims * self.outputs_per_subpixel))
        log_weights = []
        for start in range(0, samples, chunk):
            count = min(chunk, samples - start)
            noise = torch.randn(count, *mean.shape, device=mean.device)  # (K, B, latent_dim)
            codes = mean + std * noise
            recon_nats = self.reconstruction_nll(
                codes.flatten(0, 1), images.repeat(count, 1, 1, 1)
            ).view(count, batch)
            # log p(z) - log q(z|x); the log(2 pi) terms cancel.
            log_prior_ratio = 0.5 * (noise.pow(2) - codes.pow(2) + log_var).sum(dim=-1)
            log_weights.append(log_prior_ratio - recon_nats)  # (K, B)
        return math.log(samples) - torch.logsumexp(torch.cat(log_weights), dim=0)

    def categorical_logits(self, codes: Tensor) -> Tensor:
        """p(x|z) as logits over every level, (B, C, levels, H, W), for drawing and argmax."""
        logits = self.decoder_logits(codes)
        if self.bernoulli:  # softmax([0, l]) = [1 - sigmoid(l), sigmoid(l)]
            return torch.stack([torch.zeros_like(logits), logits], dim=2)
        return logits

    def most_likely_images(self, codes: Tensor) -> Tensor:
        return self.categorical_logits(codes).argmax(dim=2)  # (B, C, H, W)

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """z ~ N(0, I), then x ~ p(x|z): both draws from `generator`."""
        count, shape = len(labels), self.shape
        codes = torch.randn(count, self.params.latent_dim, generator=generator)
        uniform = torch.rand(count, shape.channels, shape.height, shape.width, generator=generator)
        logits = self.categorical_logits(codes.to(labels.device))  # (N, C, levels, H, W)
        return sample_categorical(logits.movedim(2, -1), uniform.to(labels.device))

    @torch.no_grad()
    def visuals(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Reconstructions and latent interpolations, decoded to their most likely images.

        Reconstructions decode the posterior mean of each image, below the originals.
        Interpolation row r walks linearly, in INTERPOLATION_STEPS steps, from the posterior
        mean of image r to that of image r + 1 (cycling through the images).
        """
        del labels, generator
        mean, _ = self.posterior(images)
        grids = {"reconstructions": torch.cat([images, self.most_likely_images(mean)])}
        if len(images) >= 2:
            rows = torch.arange(INTERPOLATION_STEPS, device=mean.device) % len(images)
            starts, ends = mean[rows, None], mean[(rows + 1) % len(images), None]  # (rows, 1, Z)
            weights = torch.linspace(0.0, 1.0, INTERPOLATION_STEPS, device=mean.device)
            path = torch.lerp(starts, ends, weights[None, :, None])  # (rows, steps, latent)
            grids["interpolations"] = self.most_likely_images(path.flatten(0, 1))
        return grids


MODEL = VAE
