"""The cached sampler draws exactly the naive sampler's images, from the same seed, for both
PixelCNNs; its building blocks agree with the full-image convolutions they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jobs.model_params import GatedPixelCNNParams, PixelCNNParams
from trainers.api import ImageShape
from trainers.cached_sampling import (
    CachedAutoregressiveModel,
    FeatureCache,
    PositionConv,
    cached_sample,
)
from trainers.layers import MaskedConv2d
from trainers.models.gated_pixelcnn import GatedPixelCNN
from trainers.models.pixelcnn import PixelCNN
from trainers.sampling import naive_sample

NUM_CLASSES = 4


def pixelcnn(shape: ImageShape) -> PixelCNN:
    params = PixelCNNParams(layers=2, channels=4, first_kernel=5, output_hidden=24)
    return PixelCNN(params, shape, NUM_CLASSES)


def gated(shape: ImageShape, conditional: bool) -> GatedPixelCNN:
    params = GatedPixelCNNParams(
        layers=3, channels=4, kernel=3, output_hidden=24, conditional=conditional
    )
    return GatedPixelCNN(params, shape, NUM_CLASSES)


GREY = ImageShape(channels=1, height=7, width=6, levels=17)
COLOUR = ImageShape(channels=3, height=5, width=4, levels=256)
BINARY = ImageShape(channels=1, height=6, width=6, levels=2)
MODELS = {
    "pixelcnn-grey": lambda: pixelcnn(GREY),
    "pixelcnn-colour": lambda: pixelcnn(COLOUR),
    "pixelcnn-binary": lambda: pixelcnn(BINARY),
    "gated-conditional-grey": lambda: gated(GREY, conditional=True),
    "gated-conditional-colour": lambda: gated(COLOUR, conditional=True),
    "gated-unconditional-colour": lambda: gated(COLOUR, conditional=False),
    "gated-unconditional-binary": lambda: gated(BINARY, conditional=False),
}


def build(case: str) -> CachedAutoregressiveModel:
    torch.manual_seed(0)
    return MODELS[case]()


@pytest.mark.parametrize("case", sorted(MODELS))
def test_cached_sampler_draws_the_naive_samplers_images_bit_for_bit(case: str):
    model = build(case)
    labels = torch.arange(8) % NUM_CLASSES
    naive = naive_sample(model, labels, torch.Generator().manual_seed(3))
    cached = cached_sample(model, labels, torch.Generator().manual_seed(3))
    assert torch.equal(cached, naive)
    assert len(naive.unique()) > 1


@pytest.mark.parametrize("case", ["pixelcnn-colour", "gated-conditional-colour"])
def test_sample_is_the_cached_sampler_and_leaves_training_mode_alone(case: str):
    model = build(case)
    labels = torch.arange(3)
    model.train()
    sampled = model.sample(labels, torch.Generator().manual_seed(5))
    assert model.training
    assert torch.equal(sampled, naive_sample(model, labels, torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("case", ["pixelcnn-colour", "gated-conditional-grey"])
def test_completions_keep_the_top_half_and_match_naive_completions(case: str):
    model = build(case)
    shape = model.shape
    labels = torch.arange(4) % NUM_CLASSES
    images = torch.randint(0, shape.levels, (4, shape.channels, shape.height, shape.width))
    completions = model.visuals(images, labels, torch.Generator().manual_seed(2))["completions"]
    first_row = shape.height // 2
    naive = naive_sample(
        model, labels, torch.Generator().manual_seed(2), given=images, first_row=first_row
    )
    assert torch.equal(completions[:4], images)
    assert torch.equal(completions[4:], naive)
    assert torch.equal(completions[4:, :, :first_row], images[:, :, :first_row])
    assert not torch.equal(completions[4:, :, first_row:], images[:, :, first_row:])


def test_conditional_samples_from_the_same_noise_differ_by_label():
    model = build("gated-conditional-grey")
    first_class, second_class = (
        cached_sample(model, torch.full((2,), label), torch.Generator().manual_seed(11))
        for label in range(2)
    )
    assert not torch.equal(first_class, second_class)


CONVS = {
    "masked-5x5-A": lambda: MaskedConv2d(6, 9, 5, "A", colour_groups=3),
    "masked-3x3-B": lambda: MaskedConv2d(6, 6, 3, "B", colour_groups=3),
    "masked-1x3-B": lambda: MaskedConv2d(6, 4, (1, 3), "B", colour_groups=2),
    "plain-1x1": lambda: nn.Conv2d(6, 4, 1),
}


@pytest.mark.parametrize("kind", sorted(CONVS))
def test_position_conv_equals_the_full_convolution_at_every_position(kind: str):
    torch.manual_seed(0)
    conv = CONVS[kind]()
    shape = ImageShape(channels=6, height=5, width=6, levels=2)
    features = torch.randn(2, 6, 5, 6)
    with torch.no_grad():
        full = conv(features)  # (2, out, 5, 6)
    cache = FeatureCache(2, 6, shape, border=2, device=torch.device("cpu"))
    for row in range(5):
        for col in range(6):
            cache.write(row, col, features[:, :, row, col])
    position = PositionConv(conv)
    with torch.no_grad():
        for row in range(5):
            for col in range(6):
                torch.testing.assert_close(position.at(cache, row, col), full[:, :, row, col])


def test_feature_cache_reads_zeros_outside_the_image_like_zero_padding():
    shape = ImageShape(channels=2, height=3, width=3, levels=2)
    cache = FeatureCache(1, 2, shape, border=1, device=torch.device("cpu"))
    values = torch.arange(18.0).view(1, 2, 3, 3)
    cache.write_row(0, values[:, :, 0])
    cache.write(1, 0, values[:, :, 1, 0])
    window = cache.window(-1, -1, 3, 3)  # around (0, 0), channels last
    expected = F.pad(values, (1, 1, 1, 1))[:, :, :3, :3].permute(0, 2, 3, 1)
    expected[:, 2, 2] = 0  # pixel (1, 1) has not been written yet
    assert torch.equal(window, expected)
    assert torch.equal(cache.read(1, 0), values[:, :, 1, 0])
