"""Specification of the PixelCNN++ model (trainers/models/pixelcnn_pp.py)."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from torch import Tensor

from jobs.model_params import PixelCNNPPParams
from trainers.api import ImageShape
from trainers.models import model_class
from trainers.models.pixelcnn_pp import PixelCNNPP, resolution_sizes


def make_model(channels: int = 1, levels: int = 17, size: int = 8, **params: Any) -> PixelCNNPP:
    settings = {"nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0, **params}
    shape = ImageShape(channels, size, size, levels)
    return PixelCNNPP(PixelCNNPPParams(**settings), shape, num_classes=10)


def striped_digits() -> Tensor:
    """Four 8x8 17-level images with clear structure: rows, columns, diagonal, inverted rows."""
    rows = torch.arange(8).view(8, 1).expand(8, 8)
    return torch.stack([rows * 2, rows.T * 2, rows + rows.T, 16 - rows * 2]).unsqueeze(1)


def test_registry_builds_it_and_it_asks_for_weight_averaging() -> None:
    assert model_class("pixelcnn_pp") is PixelCNNPP
    assert PixelCNNPP.name == "pixelcnn_pp"
    assert PixelCNNPP.uses_ema is True
    assert PixelCNNPP.noise_per_subpixel == 2


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


@pytest.mark.parametrize("channels", [1, 3])
def test_each_pixel_depends_on_every_earlier_pixel_and_nothing_from_itself_on(
    channels: int,
) -> None:
    # Two blocks per resolution are enough for 8x8 to reach every earlier pixel: no blind spot.
    torch.manual_seed(0)
    model = make_model(channels, nr_resnet=2, nr_filters=4, nr_logistic_mix=2).eval()
    images = (torch.rand(1, channels, 8, 8) * 2 - 1).requires_grad_(True)
    params = model.logistic_params(images)  # (1, P, 8, 8)
    for position in range(64):
        row, col = divmod(position, 8)
        (grad,) = torch.autograd.grad(params[0, :, row, col].sum(), images, retain_graph=True)
        reach = grad[0].abs().flatten(1)  # (C, 64) in raster order
        assert (reach[:, position:] == 0).all(), f"pixel {row, col} sees itself or later"
        assert (reach[:, :position] > 0).all(), f"pixel {row, col} misses an earlier sub-pixel"


def test_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = make_model()
    images, labels = striped_digits(), torch.zeros(4, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = model(images, labels)["loss"].mean().item()
    for _ in range(100):
        loss = model(images, labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2


def test_state_dict_round_trip_gives_identical_eval_loss() -> None:
    torch.manual_seed(0)
    trained = make_model()
    images, labels = striped_digits(), torch.zeros(4, dtype=torch.long)
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        trained(images, labels)["loss"].mean().backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    restored = make_model().eval()
    before = restored.evaluate(images, labels)["nll_nats"]
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
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
