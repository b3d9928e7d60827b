"""Specification of the shared likelihoods in trainers/likelihood.py."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from trainers.generative_model import nats_to_bits_per_dim
from trainers.likelihood import (
    MIN_LOG_SCALE,
    bernoulli_nll,
    categorical_nll,
    discretized_logistic_mixture_nll,
    log1mexp,
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
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_interior_bin_probability_is_the_logistic_mass_over_the_bin() -> None:
    mean, scale, levels = 0.1, 0.2, 17
    probs = probabilities(pack([0.0], [[mean]], [[math.log(scale)]]), 1, levels)
    value, half_bin = -1.0 + 2.0 * 9 / 16, 1.0 / 16  # level 9 is 0.125

    def cdf(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-(x - mean) / scale))

    expected = cdf(value + half_bin) - cdf(value - half_bin)
    assert probs[9].item() == pytest.approx(expected, rel=1e-5)


def test_tiny_interior_bin_has_the_logistic_mass_over_the_bin_not_a_midpoint_estimate() -> None:
    mean, log_scale, levels = -0.5, -5.0, 256  # level 200 sits ~ 160 scales from the mean
    probs = probabilities(pack([0.0], [[mean]], [[log_scale]]), 1, levels)
    value, half_bin = -1.0 + 2.0 * 200 / 255, 1.0 / 255

    def survival(x: float) -> float:  # 1 - cdf(x) = e^-z / (1 + e^-z), no cancellation here
        z = (x - mean) / math.exp(log_scale)
        return math.exp(-z) / (1.0 + math.exp(-z))

    expected_log = math.log(survival(value - half_bin) - survival(value + half_bin))
    assert math.log(probs[200].item()) == pytest.approx(expected_log, abs=1e-4)


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


# The tail grid of issue 13: every pixel's first channel and first component takes every pair of
# (mean offset, log-scale) at the edge, next-to-edge and middle levels; the other channels and
# components draw from the same grid. Means stop at MOST_MEAN, past [-1, 1] by a margin: further
# out the NLL passes ~3000 nats, where float32's own spacing (2.4e-4) nears the 1e-3 tolerance.
OFFSETS_IN_BINS = (
    -40.0,
    -20.0,
    -10.0,
    -4.0,
    -1.5,
    -1.0,
    -0.5,
    0.0,
    0.5,
    1.0,
    1.5,
    4.0,
    10.0,
    20.0,
    40.0,
)
TAIL_LOG_SCALES = (-7.0, -6.0, -4.0, -2.0, 0.0, 1.0, 3.0)
MOST_MEAN = 2.0


@dataclass(frozen=True)
class Pixels:
    """N single pixels: mixture parameters as a network emits them, and one image each."""

    logit_probs: Tensor  # (N, M)
    means: Tensor  # (N, C, M) before the colour dependence
    log_scales: Tensor  # (N, C, M)
    coefficients: Tensor  # (N, C*(C-1)/2, M) before the tanh: G|R, B|R, B|G
    images: Tensor  # (N, C) int64

    def params(self) -> Tensor:
        parts = [self.logit_probs, self.means, self.log_scales, self.coefficients]
        return torch.cat([part.flatten(1) for part in parts], dim=1)[:, :, None, None].float()


def colour_shifts(coefficients: Tensor, values: Tensor) -> Tensor:
    """Section 2.2's mean shifts (N, C, M): G by c_GR * R, B by c_BR * R + c_BG * G."""
    if values.shape[1] == 1:
        return torch.zeros_like(values).unsqueeze(2)
    red, green = values[:, 0:1], values[:, 1:2]  # (N, 1), broadcast over the components
    c_gr, c_br, c_bg = torch.tanh(coefficients).unbind(1)  # each (N, M)
    return torch.stack([torch.zeros_like(c_gr), c_gr * red, c_br * red + c_bg * green], dim=1)


def tail_pixels(channels: int, mixtures: int, levels: int, seed: int) -> Pixels:
    """Pixels whose (dependent) means sit OFFSETS_IN_BINS bins from their own values."""
    generator = torch.Generator().manual_seed(seed)
    checked_levels = sorted({0, 1, levels // 2, levels - 2, levels - 1})
    grid = torch.cartesian_prod(
        torch.tensor(OFFSETS_IN_BINS),
        torch.tensor(TAIL_LOG_SCALES),
        torch.tensor(checked_levels, dtype=torch.float32),
    )  # (N, 3)
    count, pairs = len(grid), channels * (channels - 1) // 2

    def pick(choices: Sequence[float]) -> Tensor:  # (N, C, M)
        index = torch.randint(len(choices), (count, channels, mixtures), generator=generator)
        return torch.tensor(choices)[index]

    offsets, log_scales = pick(OFFSETS_IN_BINS), pick(TAIL_LOG_SCALES)
    offsets[:, 0, 0], log_scales[:, 0, 0] = grid[:, 0], grid[:, 1]
    images = torch.randint(levels, (count, channels), generator=generator)
    images[:, 0] = grid[:, 2].long()
    coefficients = torch.rand(count, pairs, mixtures, generator=generator) * 3.0 - 1.5
    values = images.double() * (2.0 / (levels - 1)) - 1.0  # (N, C)
    targets = values.unsqueeze(2) + offsets.double() * (2.0 / (levels - 1))  # dependent means
    means = targets.clamp(-MOST_MEAN, MOST_MEAN) - colour_shifts(coefficients.double(), values)
    return Pixels(
        logit_probs=torch.rand(count, mixtures, generator=generator) * 4.0 - 2.0,
        means=means.float(),
        log_scales=log_scales,
        coefficients=coefficients,
        images=images,
    )


def log_logistic_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """log(F(upper) - F(lower)) for the standard logistic CDF F = 1 / (1 + e^-z), float64.

    Left of 0 as F(u) * (1 - F(l)/F(u)); right of 0 as the mirrored F(-l) - F(-u), so that
    neither side subtracts two numbers near 1. Edges may be -inf and +inf.
    """

    def log_cdf(z: Tensor) -> Tensor:
        return -torch.logaddexp(torch.zeros_like(z), -z)

    left = log_cdf(upper) + torch.log(-torch.expm1(log_cdf(lower) - log_cdf(upper)))
    right = log_cdf(-lower) + torch.log(-torch.expm1(log_cdf(-upper) - log_cdf(-lower)))
    return torch.where(lower + upper < 0, left, right)


def reference_nll(pixels: Pixels, levels: int) -> Tensor:
    """Salimans et al. 2017, sections 2.1-2.2, in float64 from the float32 params. (N,)"""
    values = pixels.images.double() * (2.0 / (levels - 1)) - 1.0  # (N, C)
    means = pixels.means.double() + colour_shifts(pixels.coefficients.double(), values)
    scales = torch.exp(pixels.log_scales.double().clamp_min(MIN_LOG_SCALE))  # (N, C, M)
    half_bin = 1.0 / (levels - 1)
    at_bottom = (pixels.images == 0).unsqueeze(2)
    at_top = (pixels.images == levels - 1).unsqueeze(2)
    lower = torch.where(at_bottom, -math.inf, values.unsqueeze(2) - half_bin)
    upper = torch.where(at_top, math.inf, values.unsqueeze(2) + half_bin)
    log_masses = log_logistic_mass((lower - means) / scales, (upper - means) / scales)
    log_weights = torch.log_softmax(pixels.logit_probs.double(), dim=1)  # (N, M)
    return -torch.logsumexp(log_weights + log_masses.sum(dim=1), dim=1)


@pytest.mark.parametrize("levels", [256, 17, 2])
@pytest.mark.parametrize(("channels", "mixtures"), [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_nll_is_within_a_thousandth_of_a_nat_of_the_papers_definition_far_into_both_tails(
    channels: int, mixtures: int, levels: int
) -> None:
    pixels = tail_pixels(channels, mixtures, levels, seed=levels + channels + mixtures)
    images = pixels.images[:, :, None, None]
    nll = discretized_logistic_mixture_nll(pixels.params(), images, levels)
    error_per_sub_pixel = (nll.double() - reference_nll(pixels, levels)).abs() / channels
    assert error_per_sub_pixel.max().item() <= 1e-3


@pytest.mark.parametrize("levels", [256, 17, 2])
@pytest.mark.parametrize("mixtures", [1, 3])
def test_grey_probabilities_over_every_level_sum_to_one_for_every_tail_pixel(
    levels: int, mixtures: int
) -> None:
    params = tail_pixels(1, mixtures, levels, seed=levels + mixtures).params()  # (N, P, 1, 1)
    every_level = torch.arange(levels).repeat(len(params))[:, None, None, None]
    nll = discretized_logistic_mixture_nll(params.repeat_interleave(levels, 0), every_level, levels)
    totals = torch.exp(-nll.double()).view(len(params), levels).sum(dim=1)
    assert (totals - 1.0).abs().max().item() <= 1e-6


@pytest.mark.parametrize("levels", [17, 2])
def test_colour_probabilities_over_every_image_sum_to_one_for_tail_pixels(levels: int) -> None:
    params = tail_pixels(3, 3, levels, seed=levels).params()
    chosen = torch.randperm(len(params), generator=torch.Generator().manual_seed(0))[:12]
    for pixel in params[chosen]:
        total = probabilities(pixel.unsqueeze(0), 3, levels).sum().item()
        assert total == pytest.approx(1.0, abs=1e-6)


def test_gradients_stay_finite_for_extreme_parameters() -> None:
    # Means 100 units out, log-scales from under the floor to 15 (bins of 1e-9 scales), weights
    # and colour coefficients saturated: every combination, at the edge and interior levels.
    grid = torch.cartesian_prod(
        torch.tensor([-100.0, -1.5, 0.0, 1.5, 100.0]),  # means
        torch.tensor([-20.0, -7.0, 0.0, 3.0, 15.0]),  # log-scales
        torch.tensor([-20.0, 0.0, 20.0]),  # coefficients before the tanh
    )
    count = len(grid)
    means, log_scales, coefficients = (column.view(count, 1).expand(count, 3) for column in grid.T)
    logit_probs = torch.tensor([[50.0, -50.0]]).expand(count, 2)
    params = torch.cat(
        [logit_probs, means.repeat(1, 2), log_scales.repeat(1, 2), coefficients.repeat(1, 2)], dim=1
    )[:, :, None, None].requires_grad_()
    images = torch.tensor([0, 1, 128, 254, 255]).repeat(count * 3 // 5 + 1)[: count * 3]
    nll = discretized_logistic_mixture_nll(params, images.view(count, 3, 1, 1), 256)
    nll.sum().backward()
    assert torch.isfinite(nll).all()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    assert params.grad.abs().sum().item() > 0.0


def test_log1mexp_keeps_float32_relative_precision_at_both_ends() -> None:
    x = torch.logspace(-6, math.log10(20.0), 200, dtype=torch.float64)
    expected = torch.log(1.0 - torch.exp(-x))  # float64 holds these digits for x in [1e-6, 20]
    torch.testing.assert_close(log1mexp(x.float()).double(), expected, rtol=1e-6, atol=0.0)
