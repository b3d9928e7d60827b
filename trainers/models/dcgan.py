"""DCGAN (Radford, Metz & Chintala 2016), sized to the dataset's images.

"Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", ICLR 2016. Section 3's guidelines: strided convolutions instead of pooling,
batchnorm in both networks except the generator output and the discriminator input, ReLU in
the generator with a tanh output, LeakyReLU(0.2) in the discriminator, no hidden fully
connected layers beyond the generator's projection of z (figure 1). Section 4: weights from
N(0, 0.02), Adam with lr 2e-4 and beta1 0.5 (exposed as `adam_betas`). Headline: discriminator
features with an L2-SVM reach 82.8% accuracy on CIFAR-10 (table 1).

Training alternates two phases, one optimizer each (`phase_parameters`):
- discriminator: BCE of D on real images (target 1) plus on G(z) (target 0), nats per image;
- generator: the non-saturating loss -log D(G(z)) (Goodfellow et al. 2014, section 3).
There is no likelihood: nothing here is a bits/dim. `d_real` / `d_fake` are D's probability
of "real" for each real image and each fake, for monitoring.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.model_params import DCGANParams
from trainers.generative_model import (
    GenerativeModel,
    ImageShape,
    to_unit_range,
    unit_range_to_levels,
)
from trainers.layers.encoder_decoder import ConvDecoder, ConvEncoder

INIT_STD = 0.02  # section 4
ADAM_BETA2 = 0.999  # the paper changes beta1 only


class DCGAN(GenerativeModel):
    name = "dcgan"
    objective = "adversarial"
    phases = ("discriminator", "generator")

    def __init__(self, params: DCGANParams, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        height, width = shape.height, shape.width
        self.generator = ConvDecoder(
            params.latent_dim,
            params.generator_channels,
            shape.channels,
            height,
            width,
            batchnorm=True,
        )
        self.discriminator = ConvEncoder(
            shape.channels, height, width, params.discriminator_channels, 1, batchnorm=True
        )
        self.apply(initialise_weights)

    @property
    def adam_betas(self) -> tuple[float, float]:
        return (self.params.beta1, ADAM_BETA2)

    def phase_parameters(self, phase: str) -> Iterator[nn.Parameter]:
        return self._network(phase).parameters()

    def _network(self, phase: str) -> nn.Module:
        check_phase(phase)
        return self.discriminator if phase == "discriminator" else self.generator

    def generate(self, noise: Tensor) -> Tensor:
        return torch.tanh(self.generator(noise))  # (B, C, H, W) in [-1, 1]

    def real_and_fake_logits(self, images: Tensor, fakes: Tensor) -> tuple[Tensor, Tensor]:
        """D's logits (B,) for real images and for fakes, from ONE discriminator call.

        One call lets DDP see a single forward per phase, and both phases run D on the same
        real + fake mix, so its batchnorm statistics are the ones it was trained under.
        """
        real = to_unit_range(images, self.shape.levels)  # (B, C, H, W)
        logits = self.discriminator(torch.cat([real, fakes])).squeeze(1)  # (2B,)
        real_logits, fake_logits = logits.chunk(2)
        return real_logits, fake_logits

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        del labels
        check_phase(phase)
        # The training batch's noise comes from the global RNG, which the loop seeds.
        noise = torch.randn(len(images), self.params.latent_dim, device=images.device)
        with torch.set_grad_enabled(phase == "generator" and torch.is_grad_enabled()):
            fakes = self.generate(noise)  # no graph through G while D trains
        real_logits, fake_logits = self.real_and_fake_logits(images, fakes)
        if phase == "discriminator":
            # -log D(x) - log(1 - D(G(z))), as BCE with logits.
            loss = F.softplus(-real_logits) + F.softplus(fake_logits)
        else:
            loss = F.softplus(-fake_logits)  # -log D(G(z)): non-saturating
        return {
            "loss": loss,
            "d_real": torch.sigmoid(real_logits).detach(),
            "d_fake": torch.sigmoid(fake_logits).detach(),
        }

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor, final: bool = False) -> dict[str, Tensor]:
        """Both phase losses per image, from one generator draw and one discriminator call."""
        del labels, final
        noise = torch.randn(len(images), self.params.latent_dim, device=images.device)
        real_logits, fake_logits = self.real_and_fake_logits(images, self.generate(noise))
        return {
            "discriminator_loss": F.softplus(-real_logits) + F.softplus(fake_logits),
            "generator_loss": F.softplus(-fake_logits),
            "d_real": torch.sigmoid(real_logits),
            "d_fake": torch.sigmoid(fake_logits),
        }

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """G(z) for z ~ N(0, I) from `generator`, in eval mode (running batchnorm statistics,
        so an image does not depend on the others drawn with it), rounded to levels."""
        noise = torch.randn(len(labels), self.params.latent_dim, generator=generator)
        was_training = self.training
        self.eval()
        fakes = self.generate(noise.to(labels.device))
        self.train(was_training)
        return unit_range_to_levels(fakes, self.shape.levels)


def check_phase(phase: str) -> None:
    if phase not in DCGAN.phases:
        raise ValueError(f"phase: dcgan trains 'discriminator' and 'generator', got {phase!r}")


def initialise_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights (section 4); batchnorm scales N(1, 0.02) and zero shifts."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, INIT_STD)
        nn.init.zeros_(module.bias)


MODEL = DCGAN
