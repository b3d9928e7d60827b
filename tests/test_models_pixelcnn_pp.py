"""Specification of the PixelCNN++ model (trainers/models/pixelcnn_pp.py)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from jobs.model_params import PixelCNNPPParams
from jobs.spec import validate_spec_dict
from jobs.spec_errors import SpecError
from trainers.generative_model import ImageShape
from trainers.models import model_class
from trainers.models.pixelcnn_pp import PixelCNNPP, resolution_sizes
from trainers.optim import WeightEMA

PAPER_OPTIONS = {"weight_norm": True, "conditional": True}


def make_model(
    channels: int = 1, levels: int = 17, size: int = 8, num_classes: int = 10, **params: Any
) -> PixelCNNPP:
    settings = {"nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0, **params}
    shape = ImageShape(channels, size, size, levels)
    return PixelCNNPP(PixelCNNPPParams(**settings), shape, num_classes)


def train_steps(model: PixelCNNPP, images: Tensor, labels: Tensor, steps: int) -> list[float]:
    """Adam at 1e-3 on one batch; the loss before each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = model(images, labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def convolutions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def striped_digits() -> Tensor:
    """Four 8x8 17-level images with clear structure: rows, columns, diagonal, inverted rows."""
    rows = torch.arange(8).view(8, 1).expand(8, 8)
    return torch.stack([rows * 2, rows.T * 2, rows + rows.T, 16 - rows * 2]).unsqueeze(1)


def test_registry_builds_it_by_name() -> None:
    assert model_class("pixelcnn_pp") is PixelCNNPP


@pytest.mark.parametrize("uniform", range(PixelCNNPP.noise_per_subpixel))
def test_a_sub_pixel_draw_spends_each_of_its_uniforms(uniform: int) -> None:
    """`noise_per_subpixel` uniforms per sub-pixel (mixture component, logistic draw): drawing
    one of them anew changes some of 64 draws."""
    torch.manual_seed(0)
    model = make_model(channels=3, levels=256).eval()
    images = torch.zeros(64, 3, 8, 8, dtype=torch.long)
    labels = torch.zeros(64, dtype=torch.long)
    generator = torch.Generator().manual_seed(1)
    noise = torch.rand(64, 3, PixelCNNPP.noise_per_subpixel, generator=generator)
    redrawn = noise.clone()
    redrawn[..., uniform] = torch.rand(64, 3, generator=generator)
    with torch.no_grad():
        first = model.sample_pixel(images, labels, 2, 3, noise)
        second = model.sample_pixel(images, labels, 2, 3, redrawn)
    assert not torch.equal(first, second)


def test_resolutions_halve_while_the_image_allows() -> None:
    assert resolution_sizes(8, 8) == [(8, 8), (4, 4), (2, 2)]
    assert resolution_sizes(28, 28) == [(28, 28), (14, 14), (7, 7)]
    assert resolution_sizes(32, 32) == [(32, 32), (16, 16), (8, 8)]
    assert resolution_sizes(4, 4) == [(4, 4), (2, 2)]
    assert resolution_sizes(7, 7) == [(7, 7)]
    assert len(make_model(size=8).contracting) == 3
    assert len(make_model(size=7).contracting) == 1


@pytest.mark.parametrize(
    ("channels", "size", "levels"), [(1, 8, 17), (1, 28, 256), (1, 28, 2), (3, 32, 256)]
)
def test_forward_gives_the_exact_nll_and_its_per_dim_loss_for_every_dataset_shape(
    channels: int, size: int, levels: int
) -> None:
    torch.manual_seed(0)
    model = make_model(channels, levels, size, nr_filters=4)
    images = torch.randint(0, levels, (2, channels, size, size))
    out = model(images, torch.zeros(2, dtype=torch.long))
    assert out["nll_nats"].shape == (2,)
    assert torch.isfinite(out["nll_nats"]).all() and (out["nll_nats"] > 0).all()
    torch.testing.assert_close(out["loss"], out["nll_nats"] / (channels * size * size))


@pytest.mark.parametrize("options", [{}, PAPER_OPTIONS], ids=["plain", "paper_options"])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_depends_on_every_earlier_pixel_and_nothing_from_itself_on(
    channels: int, options: dict[str, bool]
) -> None:
    # Two blocks per resolution are enough for 8x8 to reach every earlier pixel: no blind spot.
    torch.manual_seed(0)
    model = make_model(channels, nr_resnet=2, nr_filters=4, nr_logistic_mix=2, **options).eval()
    images = (torch.rand(1, channels, 8, 8) * 2 - 1).requires_grad_(True)
    params = model.logistic_params(images, torch.tensor([3]))  # (1, P, 8, 8)
    for position in range(64):
        row, col = divmod(position, 8)
        (grad,) = torch.autograd.grad(params[0, :, row, col].sum(), images, retain_graph=True)
        reach = grad[0].abs().flatten(1)  # (C, 64) in raster order
        assert (reach[:, position:] == 0).all(), f"pixel {row, col} sees itself or later"
        assert (reach[:, :position] > 0).all(), f"pixel {row, col} misses an earlier sub-pixel"


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    losses = train_steps(make_model(), striped_digits(), torch.zeros(4, dtype=torch.long), 100)
    assert losses[-1] < losses[0] / 2


def test_paper_options_are_off_by_default_so_existing_runs_keep_their_numbers() -> None:
    params = PixelCNNPPParams()
    assert params.weight_norm is False and params.conditional is False
    model = make_model()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())


def test_weight_norm_reparametrises_every_convolution_per_output_channel() -> None:
    model = make_model(weight_norm=True)  # 8x8: 3 resolutions, one block each
    # Inputs 3; contracting 3 x (u: 2 + ul: 3); down 2 x 2; expanding 5 x (3 + 3); up 2 x 2;
    # output 1.
    layers = convolutions(model)
    assert len(layers) == 3 + 15 + 4 + 30 + 4 + 1
    assert all(parametrize.is_parametrized(layer, "weight") for layer in layers)
    for layer in layers:
        out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0  # (in, out, kh, kw)
        weight_shape = layer.weight.shape
        per_output = tuple(size if dim == out_dim else 1 for dim, size in enumerate(weight_shape))
        assert layer.parametrizations.weight.original0.shape == per_output, layer  # g


def test_weight_norm_starts_as_the_same_function_as_plain_weights() -> None:
    # No data-dependent init: g starts at ||v||, so only the parametrisation differs.
    images, labels = striped_digits(), torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    plain = make_model()(images, labels)["nll_nats"]
    torch.manual_seed(0)
    normalised = make_model(weight_norm=True)(images, labels)["nll_nats"]
    torch.testing.assert_close(normalised, plain, rtol=1e-5, atol=1e-4)


def test_weight_normalised_model_learns_random_digits() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 17, (16, 1, 8, 8))
    model = make_model(weight_norm=True)
    losses = train_steps(model, images, torch.arange(16) % 10, 20)
    assert losses[-1] < losses[0] - 0.2
    out = model(images, torch.zeros(16, dtype=torch.long))
    assert out["loss"].shape == out["nll_nats"].shape == (16,)


def test_weight_ema_copy_of_a_weight_normalised_model_follows_the_live_weights() -> None:
    torch.manual_seed(0)
    model = make_model(**PAPER_OPTIONS)
    images, labels = striped_digits(), torch.arange(4)
    ema = WeightEMA(model, decay=0.0)  # decay 0: each update copies the live weights
    train_steps(model, images, labels, 2)
    live = model.evaluate(images, labels)["nll_nats"]
    assert not torch.equal(ema.model.evaluate(images, labels)["nll_nats"], live)
    ema.update(model)
    assert torch.equal(ema.model.evaluate(images, labels)["nll_nats"], live)


def test_conditional_model_reads_the_label_in_every_gated_resnet() -> None:
    torch.manual_seed(0)
    model = make_model(conditional=True)
    images = striped_digits()
    zeros, threes = torch.zeros(4, dtype=torch.long), torch.full((4,), 3)
    assert (model(images, zeros)["nll_nats"] != model(images, threes)["nll_nats"]).all()
    model(images, threes)["loss"].mean().backward()
    class_biases = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert len(class_biases) == 2 * (3 + 5)  # both streams of every block
    for class_bias in class_biases:
        assert (class_bias.weight.grad[3] != 0).any()
        assert (class_bias.weight.grad[torch.arange(10) != 3] == 0).all()


def test_unconditional_model_ignores_the_label() -> None:
    torch.manual_seed(0)
    model = make_model()
    images = striped_digits()
    zeros, threes = torch.zeros(4, dtype=torch.long), torch.full((4,), 3)
    assert torch.equal(model(images, zeros)["nll_nats"], model(images, threes)["nll_nats"])


@pytest.mark.parametrize(("conditional", "differ"), [(True, True), (False, False)])
def test_samples_condition_on_their_labels_only_when_conditional(
    conditional: bool, differ: bool
) -> None:
    torch.manual_seed(0)
    model = make_model(1, 256, size=4, nr_filters=4, conditional=conditional)
    zeros, ones = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    first = model.sample(zeros, torch.Generator().manual_seed(7))
    other_class = model.sample(ones, torch.Generator().manual_seed(7))
    assert torch.equal(first, other_class) is not differ


def test_conditional_without_classes_is_refused_naming_the_field() -> None:
    expected = "model.params.conditional: needs a dataset of 2 or more classes, got 1"
    with pytest.raises(ValueError, match=re.escape(expected)):
        make_model(num_classes=1, conditional=True)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"weight_norm": "x"}, "model.params.weight_norm: must be a valid boolean"),
        ({"conditional": "x"}, "model.params.conditional: must be a valid boolean"),
    ],
)
def test_spec_rejects_a_non_boolean_option_naming_it(params: dict, expected: str) -> None:
    spec = {"model": {"type": "pixelcnn_pp", "params": params}, "data": {"dataset": "digits"}}
    with pytest.raises(SpecError) as caught:
        validate_spec_dict(spec)
    assert any(expected in str(error) for error in caught.value.errors), caught.value.errors


@pytest.mark.parametrize("options", [{}, PAPER_OPTIONS], ids=["plain", "paper_options"])
def test_state_dict_round_trip_gives_identical_eval_loss(options: dict[str, bool]) -> None:
    torch.manual_seed(0)
    trained = make_model(**options)
    images, labels = striped_digits(), torch.arange(4)
    train_steps(trained, images, labels, 3)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    restored = make_model(**options).eval()
    before = restored.evaluate(images, labels)["nll_nats"]
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # as checkpoints load
    expected = trained.eval().evaluate(images, labels)["nll_nats"]
    assert not torch.equal(before, expected)
    assert torch.equal(restored.evaluate(images, labels)["nll_nats"], expected)


@pytest.mark.parametrize(("channels", "levels"), [(1, 17), (3, 256), (1, 2)])
def test_sampling_is_deterministic_for_a_seed_and_within_range(channels: int, levels: int) -> None:
    torch.manual_seed(0)
    model = make_model(channels, levels, size=4, nr_filters=4, dropout=0.5)
    labels = torch.zeros(3, dtype=torch.long)
    first = model.sample(labels, torch.Generator().manual_seed(7))
    again = model.sample(labels, torch.Generator().manual_seed(7))
    other = model.sample(labels, torch.Generator().manual_seed(8))
    assert first.shape == (3, channels, 4, 4) and first.dtype == torch.long
    assert first.min() >= 0 and first.max() < levels
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert model.training  # sampling switched dropout off only while it ran


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = make_model(dropout=0.5)
    images, labels = striped_digits(), torch.zeros(4, dtype=torch.long)
    assert not torch.equal(model(images, labels)["loss"], model(images, labels)["loss"])
    model.eval()
    assert torch.equal(model(images, labels)["loss"], model(images, labels)["loss"])
