"""Specification of the shared likelihoods in trainers/likelihood.py."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import Tensor

from trainers.api import nats_to_bits_per_dim
from trainers.likelihood import (
    bernoulli_nll,
    categorical_nll,
    discretized_logistic_mixture_nll,
    sample_discretized_logistic_mixture,
)


def pack(
    logit_probs: Sequence[float],
    means: Sequence[Sequence[float]],
    log_scales: Sequence[Sequence[float]],
    coefficients: Sequence[Sequence[float]] = (),
) -> Tensor:
    """Params (1, P, 1, 1) of one pixel; means and log_scales are [channel][component],
    coefficients [pair][component] before the tanh, pairs ordered G|R, B|R, B|G."""
    parts = [logit_probs, means, log_scales, coefficients]
    return torch.cat([torch.as_tensor(part, dtype=torch.float32).flatten() for part in parts]).view(
        1, -1, 1, 1
    )


def random_params(channels: int, mixtures: int, seed: int) -> Tensor:
    """Means spread past both edges, log-scales from below the -7 floor to 0.5, real mixing."""
    generator = torch.Generator().manual_seed(seed)
    pairs = channels * (channels - 1) // 2

    def draw(*size: int, low: float, high: float) -> Tensor:
        return torch.rand(size, generator=generator) * (high - low) + low

    return pack(
        draw(mixtures, low=-2.0, high=2.0),
        draw(channels, mixtures, low=-1.2, high=1.2),
        draw(channels, mixtures, low=-7.5, high=0.5),
        draw(pairs, mixtures, low=-2.0, high=2.0),
    )


def every_image(channels: int, levels: int) -> Iterator[Tensor]:
    """Every 1x1 image (N, C, 1, 1), in batches of one first-channel value, in raster order of
    (R, G, B) so that batch k, row r is image number k * levels**(C-1) + r."""
    rest = torch.zeros(1, 0, dtype=torch.long)
    if channels > 1:
        grid = torch.cartesian_prod(*[torch.arange(levels)] * (channels - 1))
        rest = grid.reshape(-1, channels - 1)
    for first in range(levels):
        images = torch.cat([torch.full((len(rest), 1), first), rest], dim=1)
        yield images[:, :, None, None]


@torch.no_grad()
def probabilities(params: Tensor, channels: int, levels: int) -> Tensor:
    """exp(-nll) of every 1x1 image under one pixel's params, (levels**C,) float64."""
    chunks = []
    for images in every_image(channels, levels):
        nll = discretized_logistic_mixture_nll(
            params.expand(len(images), -1, -1, -1), images, levels
        )
        chunks.append(torch.exp(-nll.double()))
    return torch.cat(chunks)


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_categorical_nll_of_zero_logits_is_log2_levels_bits_per_dim(levels: int) -> None:
    images = torch.randint(0, levels, (3, 2, 4, 5))
    logits = torch.zeros(3, 2, levels, 4, 5)
    nll = categorical_nll(logits, images)
    assert nll.shape == (3,)
    bits = nats_to_bits_per_dim(nll, dims=2 * 4 * 5)
    assert bits.tolist() == pytest.approx([math.log2(levels)] * 3, rel=1e-6)


def test_bernoulli_nll_of_zero_logits_is_one_bit_per_dim() -> None:
    images = torch.randint(0, 2, (3, 1, 4, 4))
    bits = nats_to_bits_per_dim(bernoulli_nll(torch.zeros(3, 1, 4, 4), images), dims=16)
    assert bits.tolist() == pytest.approx([1.0] * 3, rel=1e-6)


# One component for 256-level colour keeps 16.7M images to a few seconds; a mixture is a
# weighted sum of components, and the 17- and 2-level cases check the weighting.
@pytest.mark.parametrize(
    ("channels", "levels", "mixtures"),
    [(1, 256, 3), (1, 17, 3), (1, 2, 3), (3, 256, 1), (3, 17, 3), (3, 2, 3)],
)
def test_mixture_probabilities_over_every_value_sum_to_one(
    channels: int, levels: int, mixtures: int
) -> None:
    probs = probabilities(random_params(channels, mixtures, seed=levels), channels, levels)
    assert len(probs) == levels**channels
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_interior_bin_probability_is_the_logistic_mass_over_the_bin() -> None:
    mean, scale, levels = 0.1, 0.2, 17
    probs = probabilities(pack([0.0], [[mean]], [[math.log(scale)]]), 1, levels)
    value, half_bin = -1.0 + 2.0 * 9 / 16, 1.0 / 16  # level 9 is 0.125

    def cdf(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-(x - mean) / scale))

    expected = cdf(value + half_bin) - cdf(value - half_bin)
    assert probs[9].item() == pytest.approx(expected, rel=1e-5)


def test_tiny_interior_bin_uses_the_density_at_its_midpoint_times_its_width() -> None:
    mean, log_scale, levels = -0.5, -5.0, 256  # level 200 sits ~ 5000 scales from the mean
    probs = probabilities(pack([0.0], [[mean]], [[log_scale]]), 1, levels)
    z = (-1.0 + 2.0 * 200 / 255 - mean) / math.exp(log_scale)
    log_density = -z - log_scale - 2.0 * math.log1p(math.exp(-z))
    expected_log = log_density + math.log(2.0 / 255)
    assert math.log(probs[200].item()) == pytest.approx(expected_log, rel=1e-4)


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_edge_bins_stay_finite_when_the_mixture_sits_at_the_other_end(levels: int) -> None:
    params = pack([0.0, 0.0], [[1.05, 3.0]], [[-7.0, -20.0]])  # all mass at the top level
    images = torch.arange(levels).view(-1, 1, 1, 1)
    nll = discretized_logistic_mixture_nll(params.expand(levels, -1, -1, -1), images, levels)
    assert torch.isfinite(nll).all()
    assert nll[-1].item() == pytest.approx(0.0, abs=1e-4)
    assert nll[0].item() > 100.0


def test_log_scales_below_the_floor_count_as_the_floor() -> None:
    images = torch.arange(17).view(-1, 1, 1, 1)
    at_floor = pack([0.0], [[0.01]], [[-7.0]]).expand(17, -1, -1, -1)
    below_floor = pack([0.0], [[0.01]], [[-12.0]]).expand(17, -1, -1, -1)
    assert torch.equal(
        discretized_logistic_mixture_nll(below_floor, images, 17),
        discretized_logistic_mixture_nll(at_floor, images, 17),
    )


def test_green_follows_red_and_blue_follows_red_and_green_linearly() -> None:
    # G = 0.5 R and B = -0.25 R + 0.75 G: at R = 1, G = 0.5 and B = 0.125 (levels 12 and 9);
    # at R = -1, G = -0.5 and B = -0.125 (levels 4 and 7).
    coefficients = [[math.atanh(0.5)], [math.atanh(-0.25)], [math.atanh(0.75)]]
    params = pack([0.0], [[0.0]] * 3, [[math.log(0.02)]] * 3, coefficients)
    probs = probabilities(params, 3, 17).view(17, 17, 17)
    for red, expected in [(16, (12, 9)), (0, (4, 7))]:
        assert divmod(probs[red].argmax().item(), 17) == expected


def test_red_marginal_of_the_colour_mixture_is_the_grey_mixture_of_red() -> None:
    colour = random_params(channels=3, mixtures=3, seed=5)
    logit_probs, means, log_scales = colour[:, 0:3], colour[:, 3:6], colour[:, 12:15]
    grey = torch.cat([logit_probs, means, log_scales], dim=1)  # red's entries come first
    red_marginal = probabilities(colour, 3, 17).view(17, 289).sum(dim=1)
    torch.testing.assert_close(red_marginal, probabilities(grey, 1, 17), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("channels", "levels"), [(3, 4), (1, 17), (3, 2)])
def test_samples_follow_the_mixture_probabilities(channels: int, levels: int) -> None:
    params = random_params(channels, mixtures=3, seed=1)
    count = 50_000
    noise = torch.rand(count, channels, 2, generator=torch.Generator().manual_seed(2))
    samples = sample_discretized_logistic_mixture(
        params[:, :, 0, 0].expand(count, -1), noise, levels
    )
    assert samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < levels
    index = (samples * levels ** torch.arange(channels - 1, -1, -1)).sum(dim=1)
    frequencies = torch.bincount(index, minlength=levels**channels).double() / count
    total_variation = 0.5 * (frequencies - probabilities(params, channels, levels)).abs().sum()
    assert total_variation.item() < 0.03


def test_params_of_the_wrong_width_are_rejected_with_the_expected_width() -> None:
    images = torch.zeros(1, 3, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="not a multiple of 10"):
        discretized_logistic_mixture_nll(torch.zeros(1, 12, 2, 2), images, 256)
