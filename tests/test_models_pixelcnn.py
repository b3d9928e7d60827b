"""pixelcnn and gated_pixelcnn: causal in raster order (R -> G -> B within a pixel), exact
likelihoods, trainable, checkpointable, and their samplers shaped and seeded as specified."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

from jobs.model_params import GatedPixelCNNParams, PixelCNNParams
from trainers.generative_model import ImageShape, nats_to_bits_per_dim
from trainers.models import model_class
from trainers.models.gated_pixelcnn import GatedPixelCNN
from trainers.models.pixelcnn import PixelCNN

GREY = ImageShape(channels=1, height=5, width=5, levels=4)
COLOUR = ImageShape(channels=3, height=4, width=4, levels=4)
NUM_CLASSES = 3


def tiny_pixelcnn(shape: ImageShape, **params: int) -> PixelCNN:
    defaults = {"layers": 2, "channels": 4, "first_kernel": 3, "output_hidden": 24}
    return PixelCNN(PixelCNNParams(**defaults | params), shape, NUM_CLASSES)


def tiny_gated(shape: ImageShape, **params: int | bool) -> GatedPixelCNN:
    defaults = {"layers": 3, "channels": 4, "output_hidden": 24}
    return GatedPixelCNN(GatedPixelCNNParams(**defaults | params), shape, NUM_CLASSES)


TINY = {"pixelcnn": tiny_pixelcnn, "gated_pixelcnn": tiny_gated}


def subpixel_index(shape: ImageShape, row: int, col: int, channel: int) -> int:
    """Position in raster order: rows, then columns, then R -> G -> B."""
    return (row * shape.width + col) * shape.channels + channel


def dependencies(model: PixelCNN | GatedPixelCNN, images: int = 3) -> Tensor:
    """depends[k, q]: changing input sub-pixel k changes the logits of sub-pixel q.

    For each of a few random images, one batch: the image and, for every sub-pixel, a copy with
    just that sub-pixel moved to another level. Several images, so that a ReLU that happens to
    be off for one of them does not hide a dependency. Indices are raster order.
    """
    shape = model.shape
    depends = torch.zeros(shape.dims, shape.dims, dtype=torch.bool)
    for _ in range(images):
        base = torch.randint(0, shape.levels, (1, shape.channels, shape.height, shape.width))
        perturbed = base.repeat(shape.dims + 1, 1, 1, 1)  # row 0 stays the base image
        for row in range(shape.height):
            for col in range(shape.width):
                for channel in range(shape.channels):
                    k = subpixel_index(shape, row, col, channel)
                    old = int(perturbed[k + 1, channel, row, col])
                    perturbed[k + 1, channel, row, col] = (old + 1) % shape.levels
        with torch.no_grad():
            logits = model.logits(perturbed, torch.zeros(shape.dims + 1, dtype=torch.long))
        change = (logits[1:] - logits[:1]).abs().amax(dim=2)  # (D, C, H, W)
        # Masked weights are exactly zero, so an allowed-to-be-ignored input changes nothing
        # at all, while a real dependency may be faint after many gated layers: any change.
        depends |= change.permute(0, 2, 3, 1).reshape(shape.dims, shape.dims) > 0
    return depends


def strictly_earlier(shape: ImageShape) -> Tensor:
    """allowed[k, q]: sub-pixel k comes before sub-pixel q in raster order."""
    return torch.ones(shape.dims, shape.dims, dtype=torch.bool).triu(diagonal=1)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [GREY, COLOUR], ids=["grey", "colour"])
def test_no_logit_depends_on_its_own_subpixel_or_a_later_one(name: str, shape: ImageShape):
    torch.manual_seed(0)
    depends = dependencies(TINY[name](shape))
    leaks = depends & ~strictly_earlier(shape)
    assert not leaks.any(), f"(input, output) pairs against raster order: {leaks.nonzero()[:5]}"
    assert depends.any()


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_colour_sees_the_earlier_colours_of_its_pixel_and_the_pixel_to_its_left(name: str):
    torch.manual_seed(0)
    shape = COLOUR
    depends = dependencies(TINY[name](shape))
    for row in range(shape.height):
        for col in range(shape.width):
            for channel in range(shape.channels):
                q = subpixel_index(shape, row, col, channel)
                for earlier in range(channel):
                    assert depends[subpixel_index(shape, row, col, earlier), q]
                if col > 0:
                    left = [subpixel_index(shape, row, col - 1, c) for c in range(shape.channels)]
                    assert depends[left, q].all()


@pytest.mark.parametrize("shape", [ImageShape(1, 6, 6, 4), ImageShape(3, 4, 4, 4)])
def test_gated_pixelcnn_sees_every_earlier_subpixel_but_pixelcnn_has_a_blind_spot(
    shape: ImageShape,
):
    torch.manual_seed(0)
    everything_earlier = strictly_earlier(shape)
    gated = dependencies(tiny_gated(shape, layers=6, kernel=3))
    assert torch.equal(gated, everything_earlier)
    # Stacked masked 3x3 convolutions gain at most one column to the right per row up, so
    # (i, j) never sees (i - 1, j + 2): the blind spot of van den Oord et al. NIPS 2016, figure 1.
    masked = dependencies(tiny_pixelcnn(shape, layers=6, first_kernel=3))
    output = subpixel_index(shape, shape.height - 1, 0, 0)
    blind = subpixel_index(shape, shape.height - 2, 2, 0)
    assert gated[blind, output]
    assert not masked[blind, output]


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_zero_logits_give_log2_levels_bits_per_dim(name: str, levels: int):
    torch.manual_seed(0)
    shape = ImageShape(channels=3, height=4, width=4, levels=levels)
    model = TINY[name](shape)
    with torch.no_grad():
        model.head.out.weight.zero_()
        model.head.out.bias.zero_()
    images = torch.randint(0, levels, (2, 3, 4, 4))
    out = model(images, torch.zeros(2, dtype=torch.long))
    bits_per_dim = nats_to_bits_per_dim(out["nll_nats"], shape.dims)
    torch.testing.assert_close(bits_per_dim, torch.full((2,), math.log2(levels)), rtol=1e-6, atol=0)
    torch.testing.assert_close(out["loss"], torch.full((2,), math.log(levels)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_loss_falls_tenfold_in_150_steps_on_a_tiny_batch(name: str):
    torch.manual_seed(0)
    shape = ImageShape(channels=1, height=8, width=8, levels=17)
    model = TINY[name](shape, channels=8, output_hidden=32)
    images = torch.randint(0, shape.levels, (4, 1, 8, 8))
    labels = torch.arange(4) % NUM_CLASSES
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = model(images, labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(17), rel=0.05)  # near-uniform at initialisation
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("name", sorted(TINY))
def test_state_dict_round_trip_gives_identical_eval_loss(name: str):
    torch.manual_seed(0)
    trained = TINY[name](COLOUR)
    torch.manual_seed(1)
    restored = TINY[name](COLOUR)
    images = torch.randint(0, COLOUR.levels, (3, 3, 4, 4))
    labels = torch.arange(3)
    before = restored.evaluate(images, labels)["nll_nats"]
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    after = restored.evaluate(images, labels)["nll_nats"]
    assert torch.equal(after, trained.evaluate(images, labels)["nll_nats"])
    assert not torch.equal(before, after)


@pytest.mark.parametrize("name", sorted(TINY))
def test_samples_are_levels_of_the_right_shape_and_fixed_by_the_seed(name: str):
    torch.manual_seed(0)
    shape = ImageShape(channels=3, height=5, width=4, levels=5)
    model = TINY[name](shape)
    labels = torch.arange(6) % NUM_CLASSES
    first = model.sample(labels, torch.Generator().manual_seed(7))
    again = model.sample(labels, torch.Generator().manual_seed(7))
    other = model.sample(labels, torch.Generator().manual_seed(8))
    assert first.shape == (6, 3, 5, 4)
    assert first.dtype == torch.long
    assert first.min() >= 0
    assert first.max() < shape.levels
    assert len(first.unique()) == shape.levels  # random weights: every level turns up
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_gated_pixelcnn_logits_follow_the_label_only_when_conditional():
    torch.manual_seed(0)
    images = torch.randint(0, GREY.levels, (1, 1, 5, 5)).repeat(NUM_CLASSES, 1, 1, 1)
    labels = torch.arange(NUM_CLASSES)
    for conditional in (True, False):
        model = tiny_gated(GREY, conditional=conditional)
        with torch.no_grad():
            logits = model.logits(images, labels)  # same image, one label each
        assert torch.equal(logits[0], logits[1]) is not conditional
    assert torch.equal(*tiny_pixelcnn(GREY).logits(images[:2], labels[:2]))


@pytest.mark.parametrize(
    ("name", "field"), [("pixelcnn", "first_kernel"), ("gated_pixelcnn", "kernel")]
)
def test_an_even_kernel_is_refused_naming_the_field(name: str, field: str):
    with pytest.raises(ValueError, match=f"{field}\n.*must be odd"):
        TINY[name](GREY, **{field: 4})


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(
    "shape",
    [
        ImageShape(1, 8, 8, 17),
        ImageShape(1, 28, 28, 2),
        ImageShape(1, 28, 28, 256),
        ImageShape(3, 32, 32, 256),
    ],
    ids=["digits", "binarized_mnist", "mnist", "cifar10"],
)
def test_default_params_give_one_nll_per_image_on_every_dataset_shape(name: str, shape: ImageShape):
    torch.manual_seed(0)
    cls = model_class(name)
    assert cls.name == name
    params = {"pixelcnn": PixelCNNParams, "gated_pixelcnn": GatedPixelCNNParams}[name]()
    model = cls(params, shape, 10)
    images = torch.randint(0, shape.levels, (2, shape.channels, shape.height, shape.width))
    out = model.evaluate(images, torch.tensor([0, 9]))
    assert out["nll_nats"].shape == (2,)
    # Random weights sit near the uniform distribution's log(levels) nats per sub-pixel.
    assert out["loss"] == pytest.approx(torch.full((2,), math.log(shape.levels)), rel=0.1)
