"""Exact discrete likelihoods, in nats per image, shared by every model.

Sums, never means, leave these functions: the loop adds them over the whole evaluation set (no
shuffling, no dropped batch) and across DDP ranks before dividing once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
