"""The cached sampler draws exactly the naive sampler's images, from the same seed, for both
PixelCNNs, PixelCNN++ and both PixelRNNs; its building blocks agree with the full-image
convolutions they replace."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jobs.model_params import (
    GatedPixelCNNParams,
    PixelCNNParams,
    PixelCNNPPParams,
    PixelRNNParams,
)
from trainers import cached_sampling
from trainers.cached_sampling import (
    FeatureCache,
    IncrementalModel,
    PositionConv,
    cached_sample,
)
from trainers.generative_model import ImageShape, to_unit_range
from trainers.layers.masked_conv import MaskedConv2d
from trainers.layers.shifted_conv import ShiftedConv2d
from trainers.models.gated_pixelcnn import GatedPixelCNN
from trainers.models.pixelcnn import PixelCNN
from trainers.models.pixelcnn_pp import PixelCNNPP, resolution_sizes
from trainers.models.pixelrnn_diag import DiagonalPixelRNN
from trainers.models.pixelrnn_row import PixelRNN, RowPixelRNN
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


PIXELRNN = PixelRNNParams(layers=2, hidden=4, output_hidden=24)
THREE_LAYERS = PixelRNNParams(layers=3, hidden=5, output_hidden=24)
ONE_LAYER = PixelRNNParams(layers=1, hidden=4, output_hidden=24)


def row_lstm(shape: ImageShape) -> RowPixelRNN:
    return RowPixelRNN(PIXELRNN, shape, NUM_CLASSES)


def diagonal(shape: ImageShape) -> DiagonalPixelRNN:
    return DiagonalPixelRNN(PIXELRNN, shape, NUM_CLASSES)


def pixelcnn_pp(shape: ImageShape, **params: object) -> PixelCNNPP:
    """Dropout on, so that a sampler left in training mode would show."""
    settings = {"nr_filters": 6, "nr_logistic_mix": 3, "dropout": 0.5, **params}
    return PixelCNNPP(PixelCNNPPParams(**settings), shape, NUM_CLASSES)


GREY = ImageShape(channels=1, height=7, width=6, levels=17)
COLOUR = ImageShape(channels=3, height=5, width=4, levels=256)
BINARY = ImageShape(channels=1, height=6, width=6, levels=2)
WIDE = ImageShape(channels=3, height=3, width=7, levels=256)
ONE_ROW = ImageShape(channels=1, height=1, width=5, levels=17)
ONE_COLUMN = ImageShape(channels=3, height=5, width=1, levels=256)
THREE_RESOLUTIONS = ImageShape(channels=3, height=8, width=8, levels=256)  # 8 -> 4 -> 2
TWO_RESOLUTIONS = ImageShape(channels=1, height=6, width=6, levels=17)  # 6 -> 3
ODD = ImageShape(channels=3, height=5, width=7, levels=256)  # cannot be halved
SOFTMAX_MODELS = {
    "pixelcnn-grey": lambda: pixelcnn(GREY),
    "pixelcnn-colour": lambda: pixelcnn(COLOUR),
    "pixelcnn-binary": lambda: pixelcnn(BINARY),
    "gated-conditional-grey": lambda: gated(GREY, conditional=True),
    "gated-conditional-colour": lambda: gated(COLOUR, conditional=True),
    "gated-unconditional-colour": lambda: gated(COLOUR, conditional=False),
    "gated-unconditional-binary": lambda: gated(BINARY, conditional=False),
    "pixelrnn-row-grey": lambda: row_lstm(GREY),
    "pixelrnn-row-colour": lambda: row_lstm(COLOUR),
    "pixelrnn-row-binary": lambda: row_lstm(BINARY),
    "pixelrnn-diag-grey": lambda: diagonal(GREY),
    "pixelrnn-diag-colour": lambda: diagonal(COLOUR),
    "pixelrnn-diag-binary": lambda: diagonal(BINARY),
}
MIXTURE_MODELS = {
    "pixelcnn-pp-colour": lambda: pixelcnn_pp(THREE_RESOLUTIONS),
    "pixelcnn-pp-conditional-grey": lambda: pixelcnn_pp(
        TWO_RESOLUTIONS, nr_resnet=2, conditional=True, weight_norm=True
    ),
    "pixelcnn-pp-odd-colour": lambda: pixelcnn_pp(ODD, nr_resnet=2),
}
MODELS = {**SOFTMAX_MODELS, **MIXTURE_MODELS}


def build(case: str) -> IncrementalModel:
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


@pytest.mark.parametrize(
    "case",
    [
        "pixelcnn-colour",
        "gated-conditional-colour",
        "pixelrnn-row-colour",
        "pixelrnn-diag-colour",
        "pixelcnn-pp-colour",
    ],
)
def test_sample_is_the_cached_sampler_and_leaves_training_mode_alone(
    case: str, monkeypatch: pytest.MonkeyPatch
):
    model = build(case)
    labels = torch.arange(3)
    model.train()
    calls = []

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(args[0])
        return cached_sample(*args, **kwargs)

    monkeypatch.setattr(cached_sampling, "cached_sample", counted)
    sampled = model.sample(labels, torch.Generator().manual_seed(5))
    assert calls == [model]
    assert model.training
    assert torch.equal(sampled, naive_sample(model, labels, torch.Generator().manual_seed(5)))


def full_logits(model: IncrementalModel, images: torch.Tensor, labels: torch.Tensor):
    """The full network's logits (B, C, levels, H, W) of level images."""
    if isinstance(model, PixelRNN):
        return model.logits(to_unit_range(images, model.shape.levels))
    return model.logits(images, labels)


LOGIT_CASES = {
    **SOFTMAX_MODELS,
    "pixelrnn-row-wide-3-layers": lambda: RowPixelRNN(THREE_LAYERS, WIDE, NUM_CLASSES),
    "pixelrnn-diag-wide-3-layers": lambda: DiagonalPixelRNN(THREE_LAYERS, WIDE, NUM_CLASSES),
    "pixelrnn-row-one-row": lambda: RowPixelRNN(ONE_LAYER, ONE_ROW, NUM_CLASSES),
    "pixelrnn-diag-one-column": lambda: DiagonalPixelRNN(ONE_LAYER, ONE_COLUMN, NUM_CLASSES),
    "pixelcnn-wide": lambda: pixelcnn(WIDE),
}


def evaluated_on_random_images(
    make: Callable[[], IncrementalModel],
) -> tuple[IncrementalModel, torch.Tensor, torch.Tensor]:
    """A model in eval mode, two labels and two random level images of its shape."""
    torch.manual_seed(0)
    model = make().eval()
    shape = model.shape
    labels = torch.arange(2) % NUM_CLASSES
    images = torch.randint(0, shape.levels, (2, shape.channels, shape.height, shape.width))
    return model, labels, images


@pytest.mark.parametrize("case", sorted(LOGIT_CASES))
def test_incremental_logits_equal_the_full_networks_at_every_sub_pixel(case: str):
    """Stronger than equal images, which a small error rarely changes: every logit, fed as
    `cached_sample` feeds it, channel by channel."""
    model, labels, images = evaluated_on_random_images(LOGIT_CASES[case])
    shape = model.shape
    with torch.no_grad():
        expected = full_logits(model, images, labels)
        network = model.incremental(labels)
        for row in range(shape.height):
            network.start_row(row)
            for col in range(shape.width):
                drawn = torch.zeros_like(images[:, :, row, col])
                for channel in range(shape.channels):
                    logits = network.logits_at(row, col)
                    torch.testing.assert_close(
                        logits[:, channel], expected[:, channel, :, row, col], rtol=0, atol=1e-5
                    )
                    drawn[:, channel] = images[:, channel, row, col]
                    network.image.write(row, col, to_unit_range(drawn, shape.levels))


PARAM_CASES = {
    **MIXTURE_MODELS,
    "pixelcnn-pp-tall-3-blocks": lambda: pixelcnn_pp(
        ImageShape(channels=3, height=8, width=4, levels=256), nr_resnet=3
    ),
    "pixelcnn-pp-one-row": lambda: pixelcnn_pp(ONE_ROW),
}


def test_pixelcnn_pp_cases_run_one_two_and_three_resolutions():
    shapes = [make().shape for make in PARAM_CASES.values()]
    assert {len(resolution_sizes(shape.height, shape.width)) for shape in shapes} == {1, 2, 3}


@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_incremental_mixture_params_equal_the_full_networks_at_every_pixel(case: str):
    """A logistic draw changes level wherever a rounding error moves it across an edge, so
    check every mixture param, each pixel fed as `cached_sample` feeds it."""
    model, labels, images = evaluated_on_random_images(PARAM_CASES[case])
    assert isinstance(model, PixelCNNPP)
    shape = model.shape
    with torch.no_grad():
        expected = model.logistic_params(to_unit_range(images, shape.levels), labels)
        network = model.incremental(labels)
        for row in range(shape.height):
            network.start_row(row)
            for col in range(shape.width):
                params = network.logits_at(row, col)  # (2, P)
                torch.testing.assert_close(params, expected[:, :, row, col], rtol=0, atol=1e-5)
                pixel = to_unit_range(images[:, :, row, col], shape.levels)
                network.image.write(row, col, pixel)


@pytest.mark.parametrize(
    "case",
    [
        "pixelcnn-colour",
        "gated-conditional-grey",
        "pixelrnn-row-grey",
        "pixelrnn-diag-grey",
        "pixelcnn-pp-conditional-grey",
    ],
)
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


@pytest.mark.parametrize("case", ["gated-conditional-grey", "pixelcnn-pp-conditional-grey"])
def test_conditional_samples_from_the_same_noise_differ_by_label(case: str):
    model = build(case)
    first_class, second_class = (
        cached_sample(model, torch.full((2,), label), torch.Generator().manual_seed(11))
        for label in range(2)
    )
    assert not torch.equal(first_class, second_class)


CONVS = {
    "masked-5x5-A": lambda: MaskedConv2d(6, 9, 5, "A", colour_groups=3),
    "masked-3x3-B": lambda: MaskedConv2d(6, 6, 3, "B", colour_groups=3),
    "masked-1x3-B": lambda: MaskedConv2d(6, 4, (1, 3), "B", colour_groups=2),
    "shifted-2x3-down": lambda: ShiftedConv2d(6, 4, (2, 3), "down"),
    "shifted-2x2-down-right": lambda: ShiftedConv2d(6, 4, (2, 2), "down_right"),
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
