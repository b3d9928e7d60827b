"""PixelRNN (Row LSTM and Diagonal BiLSTM): causality, receptive field, likelihood, sampling."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

from jobs.model_params import PixelRNNParams
from trainers.generative_model import ImageShape, nats_to_bits_per_dim
from trainers.layers.lstm_scan import skew, unskew
from trainers.models import build_model
from trainers.models.pixelrnn_row import PixelRNN

MODELS = ["pixelrnn_row", "pixelrnn_diag"]
TINY = PixelRNNParams(layers=2, hidden=4, output_hidden=8)


def tiny_model(name: str, shape: ImageShape, params: PixelRNNParams = TINY) -> PixelRNN:
    torch.manual_seed(0)
    model = build_model(name, params, shape, num_classes=10)
    assert isinstance(model, PixelRNN)
    return model


def random_images(shape: ImageShape, count: int, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = (count, shape.channels, shape.height, shape.width)
    return torch.randint(0, shape.levels, size, generator=generator)


def dependence(model: PixelRNN, shape: ImageShape, trials: int = 3) -> Tensor:
    """(C, H, W, C, H, W) bool: which input sub-pixels each output sub-pixel's logits read.

    Exact: a gradient entry is zero only when no path through the network connects the two
    at that input. Several random inputs, so that a ReLU that happens to be off for one of
    them hides no connection.
    """
    torch.manual_seed(2)
    image = (shape.channels, shape.height, shape.width)
    reads = torch.zeros(*image, *image, dtype=torch.bool)
    for _ in range(trials):
        inputs = torch.rand(1, *image) * 2 - 1
        inputs.requires_grad_()
        logits = model.logits(inputs)  # (1, C, levels, H, W)
        # A random projection over levels, so that no gradient cancels by symmetry.
        per_output = (logits * torch.randn_like(logits)).sum(dim=2)[0]  # (C, H, W)
        for index, output in enumerate(per_output.flatten()):
            (gradient,) = torch.autograd.grad(output, inputs, retain_graph=True)
            reads.view(-1, *image)[index] |= gradient[0] != 0
    return reads


def strictly_earlier(shape: ImageShape) -> Tensor:
    """(C, H, W, C, H, W) bool: input sub-pixel comes before output sub-pixel (raster, R->G->B)."""
    channel, row, col = torch.meshgrid(
        torch.arange(shape.channels),
        torch.arange(shape.height),
        torch.arange(shape.width),
        indexing="ij",
    )
    order = (row * shape.width + col) * shape.channels + channel  # (C, H, W)
    return order[None, None, None] < order[:, :, :, None, None, None]


GREY = ImageShape(channels=1, height=5, width=5, levels=4)
COLOUR = ImageShape(channels=3, height=4, width=4, levels=4)


@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["grey", "colour"])
@pytest.mark.parametrize("name", MODELS)
def test_no_output_reads_its_own_or_a_later_subpixel(name: str, shape: ImageShape) -> None:
    reads = dependence(tiny_model(name, shape), shape)
    leaks = reads & ~strictly_earlier(shape)
    assert not leaks.any(), f"outputs reading later sub-pixels: {leaks.nonzero().tolist()[:5]}"
    assert reads.sum() > 0


def last_pixel_of_row_above(shape: ImageShape) -> Tensor:
    """(C, H, W, C, H, W) bool: outputs (i, j < W - 4) paired with input pixel (i - 1, W - 1).

    The 7x7 type-A input conv shows pixel (i - 1, W - 1) to no feature of row i - 1 and first
    to features of row i at columns >= W - 4, so the outputs left of those never read it.
    """
    image = (shape.channels, shape.height, shape.width)
    spot = torch.zeros(*image, *image, dtype=torch.bool)
    for row in range(1, shape.height):
        spot[:, row, : max(shape.width - 4, 0), :, row - 1, shape.width - 1] = True
    return spot


@pytest.mark.parametrize(
    "shape", [GREY, COLOUR, ImageShape(1, 3, 8, 4)], ids=["grey", "colour", "wide"]
)
def test_diagonal_bilstm_reads_every_earlier_subpixel_but_the_input_conv_blind_spot(
    shape: ImageShape,
) -> None:
    reads = dependence(tiny_model("pixelrnn_diag", shape), shape)
    assert torch.equal(reads, strictly_earlier(shape) & ~last_pixel_of_row_above(shape))


@pytest.mark.parametrize("name", MODELS)
def test_last_pixel_reads_the_first_beyond_the_input_convolution(name: str) -> None:
    # 8x8: the 7x7 input conv at (7, 7) reaches back to row 4 only, so only the LSTM links them.
    shape = ImageShape(channels=1, height=8, width=8, levels=4)
    model = tiny_model(name, shape, PixelRNNParams(layers=1, hidden=4, output_hidden=8))
    inputs = torch.zeros(1, 1, 8, 8, requires_grad=True)
    model.logits(inputs)[0, 0, :, 7, 7].sum().backward()
    assert inputs.grad is not None
    assert inputs.grad[0, 0, 0, 0] != 0


def test_row_lstm_context_is_a_triangle_and_diagonal_bilstm_context_is_wider() -> None:
    # Pixel (7, 0) comes after (6, 6), but the Row LSTM's triangle above (7, 0) is too narrow
    # to reach it (section 3.1); the Diagonal BiLSTM's right-to-left pass does (section 3.2).
    shape = ImageShape(channels=1, height=8, width=8, levels=4)
    one_layer = PixelRNNParams(layers=1, hidden=4, output_hidden=8)
    reads = {name: dependence(tiny_model(name, shape, one_layer), shape) for name in MODELS}
    assert not reads["pixelrnn_row"][0, 7, 0, 0, 6, 6]
    assert reads["pixelrnn_diag"][0, 7, 0, 0, 6, 6]
    assert (reads["pixelrnn_diag"] | ~reads["pixelrnn_row"]).all()  # row's context is a subset


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("name", MODELS)
def test_zero_logits_give_exactly_log2_levels_bits_per_dim(name: str, levels: int) -> None:
    shape = ImageShape(channels=3, height=4, width=4, levels=levels)
    model = tiny_model(name, shape)
    torch.nn.init.zeros_(model.head.out.weight)
    torch.nn.init.zeros_(model.head.out.bias)
    out = model.evaluate(random_images(shape, 3), torch.zeros(3, dtype=torch.long))
    bits_per_dim = nats_to_bits_per_dim(out["nll_nats"], shape.dims)
    assert torch.allclose(bits_per_dim, torch.full((3,), math.log2(levels)), rtol=1e-6)
    assert torch.allclose(out["loss"], torch.full((3,), math.log(levels)), rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_batch(name: str) -> None:
    shape = ImageShape(channels=1, height=6, width=6, levels=4)
    model = tiny_model(name, shape, PixelRNNParams(layers=1, hidden=8, output_hidden=16))
    images = random_images(shape, 4)
    labels = torch.zeros(4, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    first_loss = model(images, labels)["loss"].mean().item()
    for _ in range(80):
        loss = model(images, labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final_loss = model.evaluate(images, labels)["loss"].mean().item()
    assert first_loss == pytest.approx(math.log(4), rel=0.05)
    assert final_loss < first_loss / 20


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_gives_identical_eval_loss(name: str) -> None:
    shape = ImageShape(channels=3, height=4, width=4, levels=8)
    trained = tiny_model(name, shape)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    torch.manual_seed(123)
    restored = build_model(name, TINY, shape, num_classes=10)
    images, labels = random_images(shape, 4), torch.zeros(4, dtype=torch.long)
    before = restored.evaluate(images, labels)["nll_nats"]
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    expected = trained.evaluate(images, labels)["nll_nats"]
    assert not torch.equal(before, expected)
    assert torch.equal(restored.evaluate(images, labels)["nll_nats"], expected)


@pytest.mark.parametrize("name", MODELS)
def test_logits_of_the_rows_so_far_equal_those_of_the_whole_image(name: str) -> None:
    # The sampler runs only rows generated so far; that must not change any probability.
    shape = ImageShape(channels=3, height=5, width=4, levels=4)
    model = tiny_model(name, shape)
    inputs = torch.randn(2, 3, 5, 4)
    whole = model.logits(inputs)  # (2, 3, levels, 5, 4)
    for rows in range(1, 5):
        assert torch.allclose(model.logits(inputs[:, :, :rows]), whole[..., :rows, :], atol=1e-6)


@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["grey", "colour"])
@pytest.mark.parametrize("name", MODELS)
def test_samples_are_levels_of_the_right_shape_and_fixed_by_the_seed(
    name: str, shape: ImageShape
) -> None:
    model = tiny_model(name, shape)
    labels = torch.zeros(6, dtype=torch.long)
    first = model.sample(labels, torch.Generator().manual_seed(7))
    again = model.sample(labels, torch.Generator().manual_seed(7))
    other = model.sample(labels, torch.Generator().manual_seed(8))
    assert first.shape == (6, shape.channels, shape.height, shape.width)
    assert first.dtype == torch.int64
    assert first.min() >= 0 and first.max() < shape.levels
    assert len(first.unique()) > 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", MODELS)
def test_samples_follow_the_learned_distribution_colour_by_colour(name: str) -> None:
    # Trained on an all-dark and an all-light image, the model must draw R by a coin flip and
    # then G and B from the R just drawn, so every sample is one of the two, and both appear.
    shape = ImageShape(channels=3, height=2, width=2, levels=2)
    model = tiny_model(name, shape, PixelRNNParams(layers=1, hidden=4, output_hidden=8))
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]).long()
    labels = torch.zeros(2, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        loss = model(images, labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    samples = model.sample(torch.zeros(16, dtype=torch.long), torch.Generator().manual_seed(0))
    is_dark = samples.flatten(1).eq(0).all(dim=1)
    is_light = samples.flatten(1).eq(1).all(dim=1)
    assert (is_dark | is_light).all()
    assert is_dark.any() and is_light.any()


@pytest.mark.parametrize("name", MODELS)
def test_completions_keep_the_given_top_half(name: str) -> None:
    shape = ImageShape(channels=1, height=6, width=6, levels=4)
    images = random_images(shape, 3)
    grids = tiny_model(name, shape).visuals(
        images, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    completions = grids["completions"][3:]  # (3, 1, 6, 6), after the originals
    assert torch.equal(grids["completions"][:3], images)
    assert torch.equal(completions[:, :, :3], images[:, :, :3])


@pytest.mark.parametrize(
    "shape",
    [ImageShape(1, 28, 28, 2), ImageShape(1, 28, 28, 256), ImageShape(3, 32, 32, 256)],
    ids=["binarized_mnist", "mnist", "cifar10"],
)
@pytest.mark.parametrize("name", MODELS)
def test_dataset_shapes_start_near_uniform_likelihood(name: str, shape: ImageShape) -> None:
    model = tiny_model(name, shape)
    out = model.evaluate(random_images(shape, 2), torch.zeros(2, dtype=torch.long))
    assert out["nll_nats"].shape == (2,)
    bits_per_dim = nats_to_bits_per_dim(out["nll_nats"], shape.dims)
    assert torch.allclose(bits_per_dim, torch.full((2,), math.log2(shape.levels)), rtol=0.05)


def test_skew_moves_pixel_i_j_to_column_i_plus_j_and_unskew_undoes_it() -> None:
    maps = torch.randn(2, 3, 4, 5)
    skewed = skew(maps)  # (2, 3, 4, 8)
    assert skewed.shape == (2, 3, 4, 8)
    for row in range(4):
        assert torch.equal(skewed[:, :, row, row : row + 5], maps[:, :, row])
        assert skewed[:, :, row, :row].eq(0).all() and skewed[:, :, row, row + 5 :].eq(0).all()
    assert torch.equal(unskew(skewed, width=5), maps)
