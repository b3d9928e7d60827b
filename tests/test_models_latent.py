"""Specification of the latent-variable models: autoencoder, vae and dcgan."""

from __future__ import annotations

import io
import math
from functools import cache
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits

from jobs.model_params import AutoencoderParams, DCGANParams, Params, VAEParams
from trainers.generative_model import (
    GenerativeModel,
    ImageShape,
    to_unit_range,
    unit_range_to_levels,
)
from trainers.models import build_model, vae

DIGITS = ImageShape(channels=1, height=8, width=8, levels=17)
BINARIZED_MNIST = ImageShape(channels=1, height=28, width=28, levels=2)
CIFAR10 = ImageShape(channels=3, height=32, width=32, levels=256)
SHAPES = [DIGITS, BINARIZED_MNIST, CIFAR10]

TINY_PARAMS: dict[str, Params] = {
    "autoencoder": AutoencoderParams(latent_dim=4, channels=8),
    "vae": VAEParams(latent_dim=4, channels=8, iw_samples=4, iw_samples_final=8),
    "dcgan": DCGANParams(latent_dim=8, generator_channels=8, discriminator_channels=8),
}
MODELS = list(TINY_PARAMS)


def tiny_model(name: str, shape: ImageShape = DIGITS, seed: int = 0, **params: object) -> Any:
    torch.manual_seed(seed)
    model_params = TINY_PARAMS[name].model_copy(update=params)
    return build_model(name, model_params, shape, num_classes=10)


def random_images(shape: ImageShape, count: int = 3) -> torch.Tensor:
    size = (count, shape.channels, shape.height, shape.width)
    return torch.randint(0, shape.levels, size, generator=torch.Generator().manual_seed(0))


@cache
def all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.long)[:, None]  # (1797, 1, 8, 8), 17 levels
    return images, torch.tensor(data.target)


def digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = all_digits()
    return images[:count].clone(), labels[:count].clone()


def train_steps(model: GenerativeModel, images: torch.Tensor, steps: int, lr: float) -> None:
    labels = torch.zeros(len(images), dtype=torch.long)
    optimizers = {
        phase: torch.optim.Adam(model.phase_parameters(phase), lr=lr) for phase in model.phases
    }
    model.train()
    for _ in range(steps):
        for phase, optimizer in optimizers.items():
            model.zero_grad()
            model(images, labels, phase)["loss"].mean().backward()
            optimizer.step()


def assert_per_image_and_finite(terms: dict[str, torch.Tensor], keys: set[str], count: int):
    assert set(terms) == keys
    for key, value in terms.items():
        assert value.shape == (count,), key
        assert torch.isfinite(value).all(), key


# -- every model, every image shape ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "binarized_mnist", "cifar10"])
def test_autoencoder_returns_finite_reconstruction_terms_and_no_likelihood(shape: ImageShape):
    model = tiny_model("autoencoder", shape)
    images = random_images(shape)
    labels = torch.zeros(3, dtype=torch.long)
    assert model.objective == "reconstruction"
    assert_per_image_and_finite(model(images, labels), {"loss", "mse", "psnr_db"}, 3)
    assert_per_image_and_finite(model.evaluate(images, labels), {"loss", "mse", "psnr_db"}, 3)


@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "binarized_mnist", "cifar10"])
def test_vae_returns_finite_elbo_terms_and_evaluates_an_importance_weighted_nll(
    shape: ImageShape,
):
    model = tiny_model("vae", shape)
    images = random_images(shape)
    labels = torch.zeros(3, dtype=torch.long)
    elbo_terms = {"loss", "neg_elbo_nats", "kl_nats", "recon_nats"}
    assert model.objective == "elbo"
    assert_per_image_and_finite(model(images, labels), elbo_terms, 3)
    assert_per_image_and_finite(model.evaluate(images, labels), elbo_terms | {"nll_nats"}, 3)


@pytest.mark.parametrize("shape", SHAPES, ids=["digits", "binarized_mnist", "cifar10"])
def test_dcgan_returns_finite_terms_for_each_phase_and_both_losses_at_evaluation(
    shape: ImageShape,
):
    model = tiny_model("dcgan", shape)
    images = random_images(shape)
    labels = torch.zeros(3, dtype=torch.long)
    assert model.objective == "adversarial"
    assert model.phases == ("discriminator", "generator")
    for phase in model.phases:
        assert_per_image_and_finite(model(images, labels, phase), {"loss", "d_real", "d_fake"}, 3)
    evaluation = {"discriminator_loss", "generator_loss", "d_real", "d_fake"}
    assert_per_image_and_finite(model.evaluate(images, labels), evaluation, 3)


# -- autoencoder -------------------------------------------------------------------------------


def test_autoencoder_loss_is_mean_squared_error_in_unit_range_and_psnr_follows_from_it():
    model = tiny_model("autoencoder")
    images, labels = digits(4)
    out = model(images, labels)
    codes = model.encoder(to_unit_range(images, 17))
    expected = (model.decode(codes) - to_unit_range(images, 17)).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["psnr_db"], 10 * torch.log10(4 / expected.detach()))


def test_autoencoder_overfits_a_tiny_batch_mse_falls_tenfold_in_200_steps():
    model = tiny_model("autoencoder")
    images, labels = digits(8)
    before = model.evaluate(images, labels)["mse"].mean()
    train_steps(model, images, steps=200, lr=3e-3)
    after = model.evaluate(images, labels)["mse"].mean()
    assert after < before / 10


def test_autoencoder_tracks_per_dimension_code_mean_and_std_while_training_only():
    model = tiny_model("autoencoder")
    images, labels = digits(16)
    with torch.no_grad():
        codes = model.encoder(to_unit_range(images, 17))  # (16, latent_dim)
        model.train()
        for _ in range(300):  # 0.95 ** 300: the initial values are forgotten
            model(images, labels)
        torch.testing.assert_close(model.code_mean, codes.mean(0), atol=1e-4, rtol=0)
        torch.testing.assert_close(model.code_std, codes.std(0, correction=0), atol=1e-4, rtol=0)
        model.eval()
        model(torch.zeros_like(images), labels)
    torch.testing.assert_close(model.code_mean, codes.mean(0), atol=1e-4, rtol=0)


def test_autoencoder_samples_decode_codes_drawn_with_the_tracked_statistics():
    model = tiny_model("autoencoder")
    code = torch.tensor([0.5, -1.0, 2.0, 0.0])
    model.code_mean.copy_(code)
    model.code_std.zero_()
    samples = model.sample(torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0))
    expected = unit_range_to_levels(model.decode(code[None]), 17)  # (1, 1, 8, 8)
    assert torch.equal(samples, expected.expand(3, -1, -1, -1))


def test_autoencoder_visuals_stack_originals_on_reconstructions():
    model = tiny_model("autoencoder")
    images, labels = digits(4)
    grid = model.visuals(images, labels, torch.Generator())["reconstructions"]
    reconstructions = unit_range_to_levels(
        model.decode(model.encoder(to_unit_range(images, 17))), 17
    )
    assert torch.equal(grid, torch.cat([images, reconstructions]))


# -- vae ---------------------------------------------------------------------------------------


def test_vae_negative_elbo_is_reconstruction_plus_kl_and_loss_is_it_per_dimension():
    model = tiny_model("vae")
    images, labels = digits(4)
    out = model(images, labels)
    torch.testing.assert_close(out["neg_elbo_nats"], out["recon_nats"] + out["kl_nats"])
    torch.testing.assert_close(out["loss"].detach(), out["neg_elbo_nats"] / 64)
    assert (out["kl_nats"] >= 0).all()


def posterior_is_prior_and_decoder_ignores_z(model: vae.VAE) -> None:
    """Zero the encoder head (mean 0, log-variance 0) and the decoder's output layer."""
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.zero_()
        output_layer = model.decoder.deconvs[-1]
        output_layer.weight.zero_()
        output_layer.bias.zero_()


@pytest.mark.parametrize(("shape", "decoder"), [(DIGITS, "auto"), (BINARIZED_MNIST, "auto")])
def test_vae_with_zeroed_logits_scores_exactly_log2_levels_bits_per_dim(
    shape: ImageShape, decoder: str
):
    model = tiny_model("vae", shape, decoder=decoder)
    posterior_is_prior_and_decoder_ignores_z(model)
    images = random_images(shape)
    out = model.evaluate(images, torch.zeros(3, dtype=torch.long))
    exact_nats = torch.full((3,), shape.dims * math.log(shape.levels))
    torch.testing.assert_close(out["recon_nats"], exact_nats)
    torch.testing.assert_close(out["kl_nats"], torch.zeros(3))
    torch.testing.assert_close(out["nll_nats"], exact_nats)
    bits_per_dim = out["nll_nats"] / (shape.dims * math.log(2))
    torch.testing.assert_close(bits_per_dim, torch.full((3,), math.log2(shape.levels)))


# 3 images x 64 sub-pixels x 17 levels per sample: chunks of 1, of 3 (3 + 3 + 1), of all 7.
@pytest.mark.parametrize("logits_per_chunk", [1, 3 * 64 * 17 * 3, 2**24])
def test_importance_weighted_nll_averages_every_sample_however_it_is_chunked(
    monkeypatch: pytest.MonkeyPatch, logits_per_chunk: int
):
    # Every importance weight is exp(-dims log levels) here, so any sample lost, or counted
    # twice, across chunks moves the result away from the exact value.
    monkeypatch.setattr(vae, "LOGITS_PER_CHUNK", logits_per_chunk)
    model = tiny_model("vae")
    posterior_is_prior_and_decoder_ignores_z(model)
    images = random_images(DIGITS)
    nll = model.importance_weighted_nll(images, samples=7)
    torch.testing.assert_close(nll, torch.full((3,), 64 * math.log(17)))


def test_vae_decoder_is_bernoulli_for_binary_data_and_categorical_otherwise():
    assert tiny_model("vae", BINARIZED_MNIST).bernoulli
    assert not tiny_model("vae", DIGITS).bernoulli
    assert not tiny_model("vae", BINARIZED_MNIST, decoder="categorical").bernoulli
    with pytest.raises(ValueError, match=r"model.params.decoder: bernoulli .* levels=17"):
        tiny_model("vae", DIGITS, decoder="bernoulli")


def test_vae_overfits_a_tiny_batch_negative_elbo_halves_in_150_steps():
    model = tiny_model("vae")
    images, labels = digits(8)
    torch.manual_seed(1)
    before = model.evaluate(images, labels)["neg_elbo_nats"].mean()
    train_steps(model, images, steps=150, lr=3e-3)
    after = model.evaluate(images, labels)["neg_elbo_nats"].mean()
    assert after < before / 2


@pytest.fixture(scope="module")
def trained_vae() -> vae.VAE:
    model = tiny_model("vae")
    images, _ = digits(64)
    torch.manual_seed(2)
    train_steps(model, images, steps=60, lr=3e-3)
    return model.eval()


def test_importance_weighted_bound_is_tighter_than_the_elbo_and_tightens_with_k(
    trained_vae: vae.VAE,
):
    images, labels = digits(64)
    torch.manual_seed(3)
    neg_elbo = torch.stack([trained_vae(images, labels)["neg_elbo_nats"] for _ in range(64)])
    bound = {k: trained_vae.importance_weighted_nll(images, k).mean() for k in (1, 8, 64)}
    # k = 1 estimates the ELBO itself: equal in expectation.
    assert bound[1] == pytest.approx(neg_elbo.mean(), abs=1.0)
    assert bound[64] < bound[8] < neg_elbo.mean()
    assert bound[64] < neg_elbo.mean() - 0.5


def test_vae_final_evaluation_uses_the_larger_importance_sample_count(trained_vae: vae.VAE):
    model = tiny_model("vae", iw_samples=1, iw_samples_final=64)
    model.load_state_dict(trained_vae.state_dict())
    images, labels = digits(64)
    torch.manual_seed(4)
    every_epoch = model.evaluate(images, labels)["nll_nats"].mean()
    final = model.evaluate(images, labels, final=True)["nll_nats"].mean()
    assert final < every_epoch - 0.5


def test_vae_interpolations_are_a_square_grid_of_walks_between_consecutive_images():
    model = tiny_model("vae")
    images, labels = digits(6)
    grids = model.visuals(images, labels, torch.Generator())
    reconstructions = grids["reconstructions"][6:]
    steps = vae.INTERPOLATION_STEPS
    rows = grids["interpolations"].view(steps, steps, 1, 8, 8)  # (row, step, C, H, W)
    starts = torch.arange(steps) % 6
    assert torch.equal(grids["reconstructions"][:6], images)
    assert torch.equal(rows[:, 0], reconstructions[starts])
    assert torch.equal(rows[:, -1], reconstructions[(starts + 1) % 6])


# -- dcgan -------------------------------------------------------------------------------------


def parameters_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> list[bool]:
    after = module.parameters()
    return [not torch.equal(old, new) for old, new in zip(before, after, strict=True)]


@pytest.mark.parametrize(
    ("phase", "frozen"), [("discriminator", "generator"), ("generator", "discriminator")]
)
def test_dcgan_step_of_one_phase_changes_only_that_network(phase: str, frozen: str):
    model = tiny_model("dcgan")
    images, labels = digits(8)
    trained_before = parameters_of(getattr(model, phase))
    frozen_before = parameters_of(getattr(model, frozen))
    optimizer = torch.optim.Adam(model.phase_parameters(phase), lr=1e-2, betas=model.adam_betas)
    model(images, labels, phase)["loss"].mean().backward()
    optimizer.step()
    assert all(changed(trained_before, getattr(model, phase)))
    assert not any(changed(frozen_before, getattr(model, frozen)))


def test_dcgan_discriminator_phase_builds_no_graph_through_the_generator():
    model = tiny_model("dcgan")
    images, labels = digits(4)
    model(images, labels, "discriminator")["loss"].sum().backward()
    assert all(parameter.grad is None for parameter in model.generator.parameters())
    assert all(parameter.grad is not None for parameter in model.discriminator.parameters())


def test_dcgan_losses_are_cross_entropies_of_the_reported_probabilities():
    model = tiny_model("dcgan")
    images, labels = digits(4)
    torch.manual_seed(5)
    d_step = model(images, labels, "discriminator")
    expected = -torch.log(d_step["d_real"]) - torch.log(1 - d_step["d_fake"])
    torch.testing.assert_close(d_step["loss"].detach(), expected)
    g_step = model(images, labels, "generator")
    torch.testing.assert_close(g_step["loss"].detach(), -torch.log(g_step["d_fake"]))


def test_dcgan_follows_the_paper_initialisation_and_adam_betas():
    model = tiny_model("dcgan", generator_channels=64, discriminator_channels=64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([conv.weight.flatten() for conv in convs])
    assert weights.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    scales = torch.cat([norm.weight.detach() for norm in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
    assert model.adam_betas == (0.5, 0.999)
    assert tiny_model("dcgan", beta1=0.3).adam_betas == (0.3, 0.999)


def test_dcgan_rejects_a_phase_it_does_not_have():
    model = tiny_model("dcgan")
    images, labels = digits(2)
    with pytest.raises(ValueError, match="phase: dcgan trains"):
        model(images, labels, "train")
    with pytest.raises(ValueError, match="phase: dcgan trains"):
        model.phase_parameters("train")


def test_dcgan_discriminator_learns_to_tell_digits_from_untrained_fakes():
    model = tiny_model("dcgan")
    images, labels = digits(32)
    optimizer = torch.optim.Adam(
        model.phase_parameters("discriminator"), lr=2e-3, betas=model.adam_betas
    )
    for _ in range(60):
        optimizer.zero_grad()
        model(images, labels, "discriminator")["loss"].mean().backward()
        optimizer.step()
    out = model.evaluate(images, labels)
    assert out["d_real"].min() > 0.8
    assert out["d_fake"].max() < 0.3


# -- every model: sampling and checkpoints -----------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [DIGITS, CIFAR10], ids=["digits", "cifar10"])
def test_samples_are_levels_of_the_right_shape_and_a_function_of_the_generator_alone(
    name: str, shape: ImageShape
):
    model = tiny_model(name, shape)
    train_steps(model, random_images(shape, count=8), steps=3, lr=1e-2)  # off the initial output
    labels = torch.zeros(4, dtype=torch.long)
    global_rng = torch.random.get_rng_state()
    first = model.sample(labels, torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), global_rng)
    assert first.shape == (4, shape.channels, shape.height, shape.width)
    assert first.dtype == torch.int64
    assert first.min() >= 0 and first.max() < shape.levels
    assert torch.equal(model.sample(labels, torch.Generator().manual_seed(7)), first)
    assert not torch.equal(model.sample(labels, torch.Generator().manual_seed(8)), first)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_gives_identical_evaluation_and_samples(name: str):
    model = tiny_model(name)
    images, labels = digits(16)
    train_steps(model, images, steps=3, lr=1e-2)  # moves batchnorm and code statistics too
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = tiny_model(name, seed=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval()
    restored.eval()
    torch.manual_seed(9)
    expected = model.evaluate(images, labels)
    torch.manual_seed(9)
    actual = restored.evaluate(images, labels)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    expected_samples = model.sample(labels, torch.Generator().manual_seed(0))
    assert torch.equal(restored.sample(labels, torch.Generator().manual_seed(0)), expected_samples)
