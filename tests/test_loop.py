"""The one training loop: metrics, exact val sums, fixed-seed samples, resume, DDP, every model."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jobs.model_params import PARAMS_BY_MODEL, Params
from jobs.spec import JobSpec
from trainers import loop
from trainers.checkpoint import CheckpointError, load_checkpoint
from trainers.data import load_dataset
from trainers.generative_model import GenerativeModel, ImageShape
from trainers.likelihood import categorical_nll, sample_categorical
from trainers.loop import NonFiniteLossError, RunContext, TrainingCancelled, TrainingRun, train_job
from trainers.models import build_model
from trainers.optim import WeightEMA
from trainers.reporter import FolderReporter
from trainers.run_local import run_local


class TinyParams(Params):
    """PixelLogits has no hyperparameters."""


class PixelLogits(GenerativeModel):
    """An independent softmax per sub-pixel. Noise on the logits while training draws from the
    global torch RNG, and `digits_spec()` turns the weight EMA on, so a resume must restore
    both."""

    name = "pixel_logits"
    objective = "exact_likelihood"

    def __init__(self, params: Params, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        size = (shape.channels, shape.levels, shape.height, shape.width)
        self.logits = nn.Parameter(torch.zeros(size))

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        logits = self.logits.expand(len(images), -1, -1, -1, -1)  # (B, C, levels, H, W)
        if self.training:
            logits = logits + 0.1 * torch.randn_like(logits)
        nll = categorical_nll(logits, images)
        return {"loss": nll / self.shape.dims, "nll_nats": nll}

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        shape = self.shape
        noise = torch.rand(
            len(labels), shape.channels, shape.height, shape.width, generator=generator
        )
        logits = self.logits.permute(0, 2, 3, 1)  # (C, H, W, levels)
        return sample_categorical(logits.expand(len(labels), -1, -1, -1, -1), noise)


class NaNAtThirdStep(PixelLogits):
    def __init__(self, params: Params, shape: ImageShape, num_classes: int) -> None:
        super().__init__(params, shape, num_classes)
        self.calls = 0

    def forward(self, images: Tensor, labels: Tensor, phase: str = "train") -> dict[str, Tensor]:
        terms = super().forward(images, labels, phase)
        self.calls += 1
        if self.calls == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def build_pixel_logits(name: str, params: Params, shape: ImageShape, num_classes: int) -> Any:
    del name, params
    return PixelLogits(TinyParams(), shape, num_classes)


@pytest.fixture
def pixel_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train the tiny model above whatever `model.type` the spec names."""
    monkeypatch.setattr(loop, "build_model", build_pixel_logits)


class RecordingReporter:
    def __init__(self) -> None:
        self.infos: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.images: dict[tuple[str, int], bytes] = {}
        self.checkpoints: list[tuple[int, Path]] = []
        self.lines: list[str] = []

    def info(self, info: dict[str, Any]) -> None:
        self.infos.append(info)

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)

    def image(self, name: str, epoch: int, png: bytes) -> None:
        self.images[(name, epoch)] = png

    def checkpoint(self, epoch: int, path: Path) -> None:
        self.checkpoints.append((epoch, path))

    def log(self, line: str) -> None:
        self.lines.append(line)


# Runs of the tiny PixelLogits (no `model` given): EMA on, full rate from the first step,
# whatever pixelcnn's recipe says.
PIXEL_LOGITS_TRAIN = {"ema_decay": 0.5, "warmup_steps": 0}


def digits_spec(model: dict[str, Any] | None = None, **train: Any) -> JobSpec:
    settings = {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 5, "num_samples": 16}
    if model is None:
        settings |= PIXEL_LOGITS_TRAIN
    return JobSpec.model_validate(
        {
            "model": model or {"type": "pixelcnn"},
            "data": {"dataset": "digits"},
            "train": {**settings, **train},
        }
    )


def context_in(folder: Path, **options: Any) -> RunContext:
    return RunContext(data_dir=folder / "data", checkpoint_dir=folder / "checkpoints", **options)


def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key != "images_per_s"}


def test_tiny_run_reports_finite_metrics_every_epoch(tmp_path: Path, pixel_logits: None) -> None:
    spec = digits_spec(lr=0.05, lr_schedule="exponential", lr_decay=0.9)
    reporter = RecordingReporter()

    final = train_job(spec, reporter, context_in(tmp_path))

    assert [m["epoch"] for m in reporter.epochs] == [1, 2]
    assert [m["step"] for m in reporter.epochs] == [5, 10]
    assert final == reporter.epochs[-1]
    expected = {"epoch", "step", "lr", "images_per_s", "train_loss", "train_nll_nats"}
    expected |= {"train_bits_per_dim", "val_loss", "val_nll_nats", "val_bits_per_dim"}
    assert set(reporter.epochs[0]) == expected  # test is evaluated after the last epoch only
    assert set(final) == expected | {"test_loss", "test_nll_nats", "test_bits_per_dim"}
    assert all(math.isfinite(value) for value in final.values())
    assert final["lr"] == pytest.approx(0.05 * 0.9**10)
    assert final["val_bits_per_dim"] < reporter.epochs[0]["val_bits_per_dim"] < math.log2(17)
    assert final["val_bits_per_dim"] == pytest.approx(final["val_nll_nats"] / (64 * math.log(2)))
    (info,) = reporter.infos
    assert info["likelihood"] == "exact" and info["objective"] == "exact_likelihood"
    assert (info["levels"], info["dims"], info["binarization"]) == (17, 64, "none")
    assert info["parameters"] == 17 * 64
    assert (info["train_images"], info["val_images"], info["test_images"]) == (1455, 162, 180)
    assert info["test_split"].startswith("held out: 0.1 of the images")


def test_val_bits_per_dim_sums_the_whole_val_set(tmp_path: Path, pixel_logits: None) -> None:
    spec = digits_spec(epochs=1, batch_size=64)  # 162 val images: batches of 64, 64 and 34
    metrics = train_job(spec, RecordingReporter(), context_in(tmp_path))

    state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0001")
    data = load_dataset(spec.data, tmp_path, spec.train.seed)
    model = PixelLogits(TinyParams(), data.shape, data.num_classes).eval()
    model.load_state_dict(state["ema"]["model"])  # the loop evaluates with the EMA weights
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])
    nll_sum = model(images, torch.zeros(len(images), dtype=torch.long))["nll_nats"].double().sum()

    hand_bits_per_dim = nll_sum.item() / (162 * 64 * math.log(2))
    assert metrics["val_bits_per_dim"] == pytest.approx(hand_bits_per_dim, rel=1e-6)


def test_test_bits_per_dim_is_a_float64_brute_force_sum_over_the_test_split(
    tmp_path: Path, pixel_logits: None
) -> None:
    spec = digits_spec(epochs=3, test_every=2)
    reporter = RecordingReporter()
    metrics = train_job(spec, reporter, context_in(tmp_path))

    assert ["test_bits_per_dim" in row for row in reporter.epochs] == [False, True, True]
    state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0003")
    test = load_dataset(spec.data, tmp_path, spec.train.seed).test
    # Each sub-pixel's probability from the trained logits, in float64, by hand, with no loss
    # function of the product (the loop sums float32 terms, hence rel 1e-6).
    log_probs = torch.log_softmax(state["ema"]["model"]["logits"].double(), dim=1)  # (C, L, H, W)
    nll_nats = 0.0
    for index in range(len(test)):
        image = test[index][0]  # (C, H, W) levels
        chosen = log_probs.gather(1, image.unsqueeze(1))  # (C, 1, H, W)
        nll_nats -= chosen.sum().item()
    assert len(test) == 180
    hand_bits_per_dim = nll_nats / (len(test) * 64 * math.log(2))
    assert metrics["test_bits_per_dim"] == pytest.approx(hand_bits_per_dim, rel=1e-6)
    assert metrics["test_nll_nats"] == pytest.approx(nll_nats / len(test), rel=1e-6)
    assert metrics["test_bits_per_dim"] != metrics["val_bits_per_dim"]


def test_fixed_seed_samples_are_identical_across_calls(tmp_path: Path, pixel_logits: None) -> None:
    reporter = RecordingReporter()
    run = TrainingRun(digits_spec(), reporter, context_in(tmp_path))
    run.setup()
    torch.manual_seed(1)
    run.sample(epoch=1)
    first = reporter.images[("samples", 1)]
    torch.manual_seed(2)  # the global RNG must not matter
    run.sample(epoch=2)

    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert reporter.images[("samples", 2)] == first
    other_seed = PixelLogits(TinyParams(), run.data.shape, 10)
    other_seed.load_state_dict(run.model.state_dict())
    labels = torch.arange(16) % 10
    assert not torch.equal(
        other_seed.sample(labels, torch.Generator().manual_seed(0)),
        other_seed.sample(labels, torch.Generator().manual_seed(1)),
    )


@pytest.mark.parametrize(
    ("warmup_steps", "first_epoch_lr"),
    [(3, 0.05 * (1 + math.cos(math.pi * 2 / 17)) / 2), (15, 0.05 * 6 / 15)],
    ids=["warm-up-ends-before-the-crash", "resumes-mid-warm-up"],
)
def test_resumed_run_continues_the_same_curve(
    tmp_path: Path, pixel_logits: None, warmup_steps: int, first_epoch_lr: float
) -> None:
    """torchtune's test_training_state_on_resume: 4 epochs straight == 2, crash, resume 2,
    with a warm-up, a cosine decay and the weight EMA all carried over the crash."""
    spec = digits_spec(
        epochs=4,
        optimizer="adamw",
        lr=0.05,
        lr_schedule="cosine",
        warmup_steps=warmup_steps,
        ema_decay=0.9,
    )
    straight = RecordingReporter()
    train_job(spec, straight, context_in(tmp_path / "straight"))
    assert straight.epochs[0]["lr"] == pytest.approx(first_epoch_lr)  # the 6th step's rate
    assert straight.epochs[-1]["lr"] == pytest.approx(0.0, abs=1e-12)

    interrupted = RecordingReporter()
    steps_done = {"count": 0}

    def stop_after_two_epochs() -> bool:
        steps_done["count"] += 1
        return steps_done["count"] > 10

    with pytest.raises(TrainingCancelled, match="epoch 3, step 11"):
        train_job(
            spec, interrupted, context_in(tmp_path / "crash", should_stop=stop_after_two_epochs)
        )
    torch.manual_seed(12345)  # drop whatever state the interrupted run left behind
    resumed = RecordingReporter()
    checkpoint = tmp_path / "crash" / "checkpoints" / "epoch-0002"
    train_job(spec, resumed, context_in(tmp_path / "crash", resume_from=checkpoint))

    assert [m["epoch"] for m in resumed.epochs] == [3, 4]
    assert [without_timing(m) for m in interrupted.epochs] == [
        without_timing(m) for m in straight.epochs[:2]
    ]
    assert [without_timing(m) for m in resumed.epochs] == [
        without_timing(m) for m in straight.epochs[2:]
    ]
    assert resumed.images[("samples", 4)] == straight.images[("samples", 4)]
    last = load_checkpoint(tmp_path / "crash" / "checkpoints" / "epoch-0004")
    assert last["ema"]["updates"] == 20  # the EMA's own warm-up resumed where it stopped


def test_checkpoint_round_trip_gives_identical_eval_loss(
    tmp_path: Path, pixel_logits: None
) -> None:
    spec = digits_spec(epochs=1)
    metrics = train_job(spec, RecordingReporter(), context_in(tmp_path))
    checkpoint = tmp_path / "checkpoints" / "epoch-0001"

    restored = TrainingRun(spec, RecordingReporter(), context_in(tmp_path, resume_from=checkpoint))
    restored.setup()

    assert (restored.epoch, restored.step) == (1, 5)
    assert restored.evaluate(final=True) == {
        k: v for k, v in metrics.items() if k.startswith("val_")
    }


def test_corrupt_checkpoint_error_names_the_file(tmp_path: Path, pixel_logits: None) -> None:
    folder = tmp_path / "checkpoints" / "epoch-0003"
    folder.mkdir(parents=True)
    (folder / "training_state.pt").write_bytes(b"not a torch file")
    context = context_in(tmp_path, resume_from=folder)
    with pytest.raises(CheckpointError, match=r"cannot read .*epoch-0003/training_state.pt"):
        train_job(digits_spec(), RecordingReporter(), context)
    with pytest.raises(CheckpointError, match=r"no training_state.pt in .*missing"):
        train_job(
            digits_spec(),
            RecordingReporter(),
            context_in(tmp_path, resume_from=tmp_path / "missing"),
        )


def test_checkpoint_of_another_model_type_is_refused(tmp_path: Path, pixel_logits: None) -> None:
    train_job(digits_spec(epochs=1), RecordingReporter(), context_in(tmp_path))
    checkpoint = tmp_path / "checkpoints" / "epoch-0001"
    context = context_in(tmp_path, resume_from=checkpoint)
    with pytest.raises(CheckpointError, match="holds a 'pixelcnn' model, the spec trains 'vae'"):
        train_job(digits_spec({"type": "vae"}), RecordingReporter(), context)


def test_weight_ema_warms_up_then_decays_at_the_configured_rate() -> None:
    live = PixelLogits(TinyParams(), ImageShape(1, 1, 1, 2), 1)
    ema = WeightEMA(live, decay=0.999)
    with torch.no_grad():
        live.logits.fill_(1.0)
    ema.update(live)  # decay min(0.999, 1/10): mostly the live weights
    assert ema.model.logits.flatten().tolist() == pytest.approx([0.9, 0.9])
    ema.updates = 10_000
    with torch.no_grad():
        live.logits.fill_(2.0)
    ema.update(live)  # decay 0.999 once warmed up
    assert ema.model.logits.flatten().tolist() == pytest.approx([0.9 * 0.999 + 2 * 0.001] * 2)


def val_bits_per_dim_with(weights: dict[str, Tensor], spec: JobSpec, data_dir: Path) -> float:
    """Bits/dim of the val split under `weights`, by hand, outside the loop."""
    data = load_dataset(spec.data, data_dir, spec.train.seed)
    model = build_model(spec.model.type, spec.model.params, data.shape, data.num_classes)
    model.load_state_dict(weights)
    pairs = [data.val[i] for i in range(len(data.val))]  # type: ignore[arg-type]
    images, labels = (torch.stack(column) for column in zip(*pairs, strict=True))
    nll_nats = model.eval().evaluate(images, labels)["nll_nats"].double().mean().item()
    return nll_nats / (data.shape.dims * math.log(2))


def test_ema_decay_gives_any_model_averaged_weights_that_evaluation_uses(tmp_path: Path) -> None:
    model = {"type": "pixelcnn", "params": TINY_PARAMS["pixelcnn"]}
    spec = digits_spec(model, epochs=1, max_steps_per_epoch=4, ema_decay=0.9, num_samples=4)
    reporter = RecordingReporter()
    metrics = train_job(spec, reporter, context_in(tmp_path))

    state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0001")
    with_average = val_bits_per_dim_with(state["ema"]["model"], spec, tmp_path / "data")
    with_live = val_bits_per_dim_with(state["model"], spec, tmp_path / "data")
    assert reporter.infos[0]["ema"] == 0.9
    assert state["ema"]["updates"] == 4
    assert abs(with_average - with_live) > 1e-3
    assert metrics["val_bits_per_dim"] == pytest.approx(with_average, rel=1e-5)


def test_dcgan_ema_averages_both_networks_and_copies_batch_norm_statistics(
    tmp_path: Path,
) -> None:
    model = {"type": "dcgan", "params": TINY_PARAMS["dcgan"]}
    spec = digits_spec(model, epochs=1, max_steps_per_epoch=3, ema_decay=0.9, num_samples=4)
    train_job(spec, RecordingReporter(), context_in(tmp_path))

    state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0001")
    live, average = state["model"], state["ema"]["model"]
    dcgan = build_model("dcgan", spec.model.params, ImageShape(1, 8, 8, 17), 10)
    buffers = {name for name, _ in dcgan.named_buffers()}
    assert any(name.endswith("running_mean") for name in buffers)
    assert all(torch.equal(live[name], average[name]) for name in buffers)
    for network in ("generator", "discriminator"):
        names = [name for name, _ in dcgan.named_parameters() if name.startswith(network)]
        assert names and any(not torch.equal(live[name], average[name]) for name in names)


def test_explicit_ema_decay_zero_turns_pixelcnn_pp_averaging_off(tmp_path: Path) -> None:
    model = {"type": "pixelcnn_pp", "params": TINY_PARAMS["pixelcnn_pp"]}
    averaged = TrainingRun(digits_spec(model), RecordingReporter(), context_in(tmp_path))
    averaged.setup()
    live = TrainingRun(digits_spec(model, ema_decay=0), RecordingReporter(), context_in(tmp_path))
    live.setup()

    assert averaged.ema is not None and averaged.ema.decay == 0.999
    assert averaged.inference_model is averaged.ema.model
    assert live.ema is None and live.inference_model is live.model
    assert live.run_info()["ema"] == 0.0


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path, pixel_logits: None) -> None:
    reporter = RecordingReporter()
    train_job(digits_spec(epochs=3, max_steps_per_epoch=1), reporter, context_in(tmp_path))
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["epoch-0002", "epoch-0003"]
    assert [epoch for epoch, _ in reporter.checkpoints] == [1, 2, 3]


def test_nan_loss_raises_non_finite_loss_error_naming_epoch_and_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        loop,
        "build_model",
        lambda name, params, shape, classes: NaNAtThirdStep(TinyParams(), shape, classes),
    )
    with pytest.raises(NonFiniteLossError, match="is nan at epoch 1, step 3") as error:
        train_job(digits_spec(), RecordingReporter(), context_in(tmp_path))
    assert (error.value.epoch, error.value.step) == (1, 3)


def test_run_local_writes_metrics_samples_and_checkpoints(tmp_path: Path) -> None:
    model = {"type": "pixelcnn", "params": {"layers": 1, "channels": 8, "output_hidden": 8}}
    spec = digits_spec(model, epochs=2, max_steps_per_epoch=2, num_samples=9)

    final = run_local(spec, tmp_path / "out", tmp_path / "data", progress=True)

    out = tmp_path / "out"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads(lines[-1]) == final
    assert json.loads((out / "info.json").read_text())["model"] == "pixelcnn"
    pngs = sorted(p.name for p in (out / "samples").iterdir())
    assert pngs == [
        "completions-epoch001.png",
        "completions-epoch002.png",
        "samples-epoch001.png",
        "samples-epoch002.png",
    ]
    # 9 samples of 8x8 enlarged 4x to 32x32, 3 per row, 2-pixel padding: 3 * 34 + 2 = 104.
    assert struct.unpack(">II", (out / "samples" / "samples-epoch001.png").read_bytes()[16:24]) == (
        104,
        104,
    )
    assert (out / "checkpoints" / "epoch-0002" / "training_state.pt").is_file()
    assert "checkpoint of epoch 2 saved" in (out / "log.txt").read_text()


TINY_PARAMS: dict[str, dict[str, Any]] = {
    "pixelcnn": {"layers": 1, "channels": 8, "first_kernel": 3, "output_hidden": 8},
    "gated_pixelcnn": {"layers": 1, "channels": 8, "output_hidden": 8},
    "pixelcnn_pp": {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2},
    "pixelrnn_row": {"layers": 1, "hidden": 8, "output_hidden": 8},
    "pixelrnn_diag": {"layers": 1, "hidden": 8, "output_hidden": 8},
    "autoencoder": {"latent_dim": 4, "channels": 8},
    "vae": {"latent_dim": 4, "channels": 8, "iw_samples": 4, "iw_samples_final": 8},
    "dcgan": {"latent_dim": 8, "generator_channels": 8, "discriminator_channels": 8},
}


def test_tiny_params_cover_every_registered_model() -> None:
    assert set(TINY_PARAMS) == set(PARAMS_BY_MODEL)


@pytest.mark.parametrize("model_type", sorted(TINY_PARAMS))
def test_every_model_trains_one_short_epoch(tmp_path: Path, model_type: str) -> None:
    torch.manual_seed(0)
    model = {"type": model_type, "params": TINY_PARAMS[model_type]}
    spec = digits_spec(model, epochs=1, batch_size=32, max_steps_per_epoch=2, num_samples=4)
    reporter = FolderReporter(tmp_path / "out")

    metrics = train_job(spec, reporter, context_in(tmp_path))

    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert (tmp_path / "out" / "samples" / "samples-epoch001.png").stat().st_size > 100
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    if info["objective"] == "exact_likelihood":
        assert 0.5 < metrics["val_bits_per_dim"] < 12
    if model_type == "vae":
        assert info["likelihood"] == "bound (IWAE k=4, k=8 at the last epoch)"
        assert metrics["val_bits_per_dim"] <= metrics["val_neg_elbo_bits_per_dim"] + 0.05
        assert metrics["val_fcd"] > 0  # one epoch's samples are far from the data
    if model_type == "dcgan":
        assert {"train_discriminator_loss", "train_generator_loss", "val_fcd"} <= set(metrics)
        assert metrics["lr"] == 0.001
    if model_type == "pixelcnn_pp":
        assert info["ema"] == 0.999  # its default recipe's


def ddp_worker(rank: int, world: int, folder: Path, resume_from: Path) -> None:
    """One rank of a 2-process gloo world: evaluate the resumed weights, then train an epoch."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world
    )
    loop.build_model = build_pixel_logits
    context = RunContext(
        data_dir=folder / "data",
        checkpoint_dir=folder / f"rank{rank}",
        rank=rank,
        world_size=world,
        wrap_model=DistributedDataParallel,
        resume_from=resume_from,
    )
    run = TrainingRun(digits_spec(epochs=2), RecordingReporter(), context)
    run.setup()
    val = run.evaluate(final=False)
    final = run.train()
    (folder / f"rank{rank}.json").write_text(json.dumps({"val": val, "final": final}))
    # Without it one rank could close its gloo connections while the other was still shutting
    # its own down, and gloo aborted that one (SIGABRT, about one run in three here).
    dist.barrier()
    dist.destroy_process_group()


def test_two_rank_ddp_world_sums_val_exactly_and_agrees(tmp_path: Path, pixel_logits: None) -> None:
    train_job(digits_spec(epochs=1), RecordingReporter(), context_in(tmp_path / "single"))
    checkpoint = tmp_path / "single" / "checkpoints" / "epoch-0001"
    single = TrainingRun(
        digits_spec(epochs=2), RecordingReporter(), context_in(tmp_path, resume_from=checkpoint)
    )
    single.setup()
    single_val = single.evaluate(final=False)

    mp.spawn(ddp_worker, args=(2, tmp_path, checkpoint), nprocs=2, join=True)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["val"]["val_bits_per_dim"] == pytest.approx(
        single_val["val_bits_per_dim"], rel=1e-12
    )
    assert without_timing(ranks[0]["final"]) == without_timing(ranks[1]["final"])
    assert ranks[0]["final"]["epoch"] == 2
    assert (tmp_path / "rank0" / "epoch-0002").is_dir()
    assert not (tmp_path / "rank1").exists()


def test_non_finite_loss_error_survives_the_pickling_ray_sends_it_through() -> None:
    import pickle

    sent = NonFiniteLossError(epoch=1, step=2, phase="train", value=float("nan"))
    received = pickle.loads(pickle.dumps(sent))
    assert str(received) == "loss of phase 'train' is nan at epoch 1, step 2"
    assert (received.epoch, received.step, received.phase) == (1, 2, "train")
