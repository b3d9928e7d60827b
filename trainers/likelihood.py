"""Exact discrete likelihoods, in nats per image, shared by every model.

Sums, never means, leave these functions: the loop adds them over the whole evaluation set (no
shuffling, no dropped batch) and across DDP ranks before dividing once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.generative_model import to_unit_range, unit_range_to_levels


def categorical_nll(logits: Tensor, images: Tensor) -> Tensor:
    """NLL in nats per image of a per-sub-pixel softmax.

    logits: (B, C, levels, H, W); images: (B, C, H, W) int64 in [0, levels). Returns (B,).
    """
    batch, levels = logits.shape[0], logits.shape[2]
    flat = logits.permute(0, 1, 3, 4, 2).reshape(-1, levels)  # (B*C*H*W, levels)
    nll = F.cross_entropy(flat, images.reshape(-1), reduction="none")
    return nll.view(batch, -1).sum(dim=1)


def bernoulli_nll(logits: Tensor, images: Tensor) -> Tensor:
    """NLL in nats per image of binary data; logits and images (B, C, H, W). Returns (B,)."""
    nll = F.binary_cross_entropy_with_logits(logits, images.float(), reduction="none")
    return nll.flatten(1).sum(dim=1)


def sample_categorical(logits: Tensor, uniform: Tensor) -> Tensor:
    """Inverse-CDF draw from softmax(logits) over the last axis, with noise given in advance.

    Taking the noise as an argument lets two samplers (naive and cached) share one noise tensor
    and so produce the same images. logits (..., levels), uniform (...) in [0, 1).
    """
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(dim=-1)
    index = (cdf < uniform.double().unsqueeze(-1)).sum(dim=-1)
    return index.clamp_max(logits.shape[-1] - 1)


# Salimans et al. 2017 (PixelCNN++), section 2.1-2.2: each pixel is a mixture of logistics,
# discretized to the data's levels; within a component the mean of a colour channel moves
# linearly with the channels before it (G on R, B on R and G).
MIN_LOG_SCALE = -7.0  # the paper's floor: a narrower logistic only makes training unstable


@dataclass(frozen=True)
class LogisticMixture:
    """The mixture parameters of every pixel, split out of a network's output channels."""

    logit_probs: Tensor  # (B, M, ...) mixture weights before softmax
    means: Tensor  # (B, C, M, ...) before the colour dependence
    log_scales: Tensor  # (B, C, M, ...) floored at MIN_LOG_SCALE
    coefficients: Tensor  # (B, C*(C-1)/2, M, ...) in (-1, 1): G|R, B|R, B|G for RGB


def logistic_mixture_channels(image_channels: int, mixtures: int) -> int:
    """Output channels a network needs: per component one weight logit, a mean and a
    log-scale per colour channel, and one coefficient per (channel, earlier channel) pair."""
    pairs = image_channels * (image_channels - 1) // 2
    return mixtures * (1 + 2 * image_channels + pairs)


def split_logistic_mixture(params: Tensor, image_channels: int) -> LogisticMixture:
    """params (B, P, ...) laid out as [logit_probs | means | log_scales | coefficients]."""
    per_component = logistic_mixture_channels(image_channels, 1)
    if params.shape[1] % per_component:
        raise ValueError(
            f"params: {params.shape[1]} channels is not a multiple of {per_component}, "
            f"the channels one logistic component needs for {image_channels} colour channels"
        )
    mixtures = params.shape[1] // per_component
    pairs = image_channels * (image_channels - 1) // 2
    sizes = [mixtures, image_channels * mixtures, image_channels * mixtures, pairs * mixtures]
    logit_probs, means, log_scales, coefficients = params.split(sizes, dim=1)
    return LogisticMixture(
        logit_probs=logit_probs,
        means=means.unflatten(1, (image_channels, mixtures)),
        log_scales=log_scales.unflatten(1, (image_channels, mixtures)).clamp_min(MIN_LOG_SCALE),
        coefficients=torch.tanh(coefficients.unflatten(1, (pairs, mixtures))),
    )


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(-x)) for x > 0, to the input's relative precision over the whole range.

    Maechler 2012, "Accurately computing log(1 - exp(-|a|))": log(-expm1(-x)) up to log 2,
    log1p(-exp(-x)) beyond.
    """
    near_zero = torch.log(-torch.expm1(-x))
    # Below ~6e-8, exp(-x) rounds to 1 and log1p(-1) is -inf; where() would still send it a
    # zero gradient, and 0 * inf is NaN, so the branch it discards never sees such inputs.
    far = torch.log1p(-torch.exp(-x.clamp_min(math.log(2.0))))
    return torch.where(x <= math.log(2.0), near_zero, far)


def _dependent_means(means: Tensor, coefficients: Tensor, values: Tensor) -> Tensor:
    """Means (B, C, ...) shifted by coefficient * value of every earlier channel.

    values (B, C, ...) in [-1, 1] broadcast against means[:, c]; pairs are taken in the order
    (1, 0), (2, 0), (2, 1), ..., which for RGB is the paper's G|R, B|R, B|G.
    """
    shifted = list(means.unbind(1))
    pair = 0
    for channel in range(1, len(shifted)):
        for earlier in range(channel):
            shifted[channel] = shifted[channel] + coefficients[:, pair] * values[:, earlier]
            pair += 1
    return torch.stack(shifted, dim=1)


def discretized_logistic_mixture_nll(params: Tensor, images: Tensor, levels: int) -> Tensor:
    """NLL in nats per image of PixelCNN++'s discretized logistic mixture.

    params: (B, P, H, W) with P = logistic_mixture_channels(C, M); images: (B, C, H, W) int64
    in [0, levels). Level k sits at -1 + 2k/(levels-1) and owns the bin of half-width
    1/(levels-1) around it; the first and last bins stretch to -inf and +inf so that the
    probabilities of all levels sum to one. Every bin's mass is exact, tails included: the
    original code's density-times-width stand-in for bins under 1e-5 overstated their NLL by up
    to 2 nats at 256 levels and 64 at 17 (issue 13). Returns (B,).
    """
    mixture = split_logistic_mixture(params, images.shape[1])
    values = to_unit_range(images, levels).unsqueeze(2)  # (B, C, 1, H, W)
    means = _dependent_means(mixture.means, mixture.coefficients, values)  # (B, C, M, H, W)
    inv_scale = torch.exp(-mixture.log_scales)  # (B, C, M, H, W)
    # Edges as odd multiples of the half-bin, not value +- half_bin: level k's top and level
    # k+1's bottom are then one float32 number, and the bins tile the line. Rounded apart, they
    # gained or lost up to 3e-5 of probability where a narrow logistic is centred on an edge.
    half_bin = 1.0 / (levels - 1)
    twice_level = 2.0 * images.unsqueeze(2).float()  # (B, C, 1, H, W)
    upper = inv_scale * ((twice_level + 1.0) * half_bin - 1.0 - means)
    lower = inv_scale * ((twice_level - 1.0) * half_bin - 1.0 - means)
    log_below_upper = F.logsigmoid(upper)  # log sigmoid(upper): the mass below the bin's top
    log_above_lower = F.logsigmoid(-lower)  # log (1 - sigmoid(lower)): the mass above its bottom
    # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)). All three log terms
    # are <= 0 and none is a difference of nearby numbers, so the bin's log-mass keeps float32's
    # relative precision in both tails, where subtracting the two sigmoids would cancel to 0.
    log_bin_mass = log_below_upper + log_above_lower + log1mexp(upper - lower)
    level = images.unsqueeze(2)  # (B, C, 1, H, W)
    log_probs = torch.where(
        level == 0,
        log_below_upper,  # everything below the first bin's upper edge
        torch.where(level == levels - 1, log_above_lower, log_bin_mass),
    )  # (B, C, M, H, W)
    # Channels share the component, so their log-probs add before mixing.
    log_joint = log_probs.sum(dim=1) + torch.log_softmax(mixture.logit_probs, dim=1)
    return -torch.logsumexp(log_joint, dim=1).flatten(1).sum(dim=1)


def sample_discretized_logistic_mixture(params: Tensor, noise: Tensor, levels: int) -> Tensor:
    """Draw levels (N, C, ...) int64 from mixture params (N, P, ...), noise given in advance.

    noise: (N, C, 2, ...) uniforms in [0, 1): noise[:, 0, 0] picks the component the pixel's
    channels share (noise[:, c, 0] for c > 0 go unused), noise[:, c, 1] is channel c's
    logistic draw. Each channel is rounded to its level before the next channel's mean reads
    it, exactly as in the likelihood, so samples follow discretized_logistic_mixture_nll.
    """
    channels = noise.shape[1]
    mixture = split_logistic_mixture(params, channels)
    component = sample_categorical(mixture.logit_probs.movedim(1, -1), noise[:, 0, 0])
    chosen = F.one_hot(component, mixture.logit_probs.shape[1]).movedim(-1, 1).unsqueeze(1)
    means = (mixture.means * chosen).sum(dim=2)  # (N, C, ...)
    scales = torch.exp((mixture.log_scales * chosen).sum(dim=2))  # (N, C, ...)
    coefficients = (mixture.coefficients * chosen).sum(dim=2)  # (N, C*(C-1)/2, ...)
    uniform = noise[:, :, 1].clamp(1e-5, 1.0 - 1e-5)  # finite logs; cuts 2e-5 of tail mass
    logistic = torch.log(uniform) - torch.log1p(-uniform)  # (N, C, ...) standard logistic
    samples = torch.zeros_like(means, dtype=torch.long)
    for channel in range(channels):
        mean = _dependent_means(means, coefficients, to_unit_range(samples, levels))[:, channel]
        value = mean + scales[:, channel] * logistic[:, channel]  # (N, ...)
        # Draws beyond -1 or 1 land in the edge levels, whose bins reach to -inf and +inf.
        samples[:, channel] = unit_range_to_levels(value, levels)
    return samples
