"""The one training loop, for every model, `genfleet run-local`, Ray Train workers and Tune trials.

It has torchtune's visible recipe steps (genfleet issue 3, section 4): `setup`, then per epoch
`train_epoch`, `evaluate`, `sample`, `save_checkpoint`; `load_checkpoint` on resume; `cleanup`.
Nothing here knows about Ray: a DDP world is described by `RunContext` (rank, world size, a
model-wrapping hook) and metric sums are all-reduced whenever torch.distributed is initialised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from jobs.failures import NotRetryable
from jobs.spec import JobSpec
from trainers import checkpoint
from trainers.batches import EvaluationBatches, TrainBatches
from trainers.data import Datasets, load_dataset
from trainers.generative_model import GenerativeModel
from trainers.images import levels_to_png
from trainers.metrics import MetricSums, all_reduce_sum, gather_from_ranks, with_bits_per_dim
from trainers.models import build_model
from trainers.optim import WeightEMA, build_optimizer, build_schedule
from trainers.quality import (
    FeatureClassifier,
    classifier_frechet_distance,
    train_feature_classifier,
)
from trainers.reporter import Reporter

CPU = torch.device("cpu")
EVALUATION_SEED = 0  # see evaluate_split
EvaluationSplit = Literal["val", "test"]  # val selects (sweeps, schedulers); test is reported
# Val images shown with their reconstructions / completions, and the width of those grids: one
# row of originals above one row of model outputs (and rows of 8 VAE interpolation steps).
VISUAL_IMAGES = 8
# Sample quality (FCD, trainers/quality.py) for models whose likelihood is absent or a bound.
FCD_OBJECTIVES = ("adversarial", "elbo")
FCD_IMAGES = 1000  # at most, real (val) and generated; FCD rises as the count falls
FCD_CLASSIFIER_IMAGES = 10_000  # train images the feature classifier learns from
FCD_CLASSIFIER_EPOCHS = 3


class NonFiniteLossError(RuntimeError, NotRetryable):
    """The loss became NaN or infinite; retrying the same spec would fail the same way."""

    def __init__(self, epoch: int, step: int, phase: str, value: float) -> None:
        super().__init__(f"loss of phase {phase!r} is {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.phase, self.value = epoch, step, phase, value

    def __reduce__(self) -> tuple[type[NonFiniteLossError], tuple[int, int, str, float]]:
        # Ray pickles a worker's error for the driver; the default rebuilds an exception from
        # its message alone, which this __init__ cannot take (the job then failed with a
        # TypeError instead of this message).
        return type(self), (self.epoch, self.step, self.phase, self.value)


class TrainingCancelled(RuntimeError):
    """`RunContext.should_stop` asked the run to stop before its last epoch."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunContext:
    """Where and how one worker runs: everything a spec does not say."""

    data_dir: Path
    checkpoint_dir: Path
    device: torch.device = CPU
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[GenerativeModel], nn.Module] | None = None  # DDP / prepare_model
    resume_from: Path | None = None  # a checkpoint folder
    should_stop: Callable[[], bool] = _never  # polled every step; True cancels the run
    on_batch: Callable[[int, int, int], None] | None = None  # (epoch, batch, batches) progress
    keep_checkpoints: int = 2  # newest local checkpoint folders kept

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train_job(spec: JobSpec, reporter: Reporter, context: RunContext) -> dict[str, Any]:
    """Train `spec` to its last epoch and return the last epoch's metrics."""
    run = TrainingRun(spec, reporter, context)
    try:
        run.setup()
        return run.train()
    finally:
        run.cleanup()


class TrainingRun:
    def __init__(self, spec: JobSpec, reporter: Reporter, context: RunContext) -> None:
        self.spec = spec
        self.train_spec = spec.train
        self.reporter = reporter
        self.context = context
        self.device = context.device
        self.epoch = 0  # last completed epoch
        self.step = 0  # batches trained so far
        self.classifier: FeatureClassifier | None = None  # for FCD, built on first use

    def setup(self) -> None:
        # Ranks start from different seeds so dropout and latent noise differ between them;
        # DDP broadcasts rank 0's initial weights, so the models still start equal.
        checkpoint.seed_everything(self.train_spec.seed + self.context.rank)
        self.data = load_dataset(self.spec.data, self.context.data_dir, self.train_spec.seed)
        self.dims = self.data.shape.dims
        self.model = build_model(
            self.spec.model.type, self.spec.model.params, self.data.shape, self.data.num_classes
        ).to(self.device)
        self._setup_batches(self.data)
        total_steps = self.train_spec.epochs * self.steps_per_epoch
        betas = self.model.adam_betas
        self.optimizers = {
            phase: build_optimizer(self.model.phase_parameters(phase), self.train_spec, betas)
            for phase in self.model.phases
        }
        self.schedulers = {
            phase: build_schedule(optimizer, self.train_spec, total_steps)
            for phase, optimizer in self.optimizers.items()
        }
        ema_decay = self.train_spec.ema_decay
        self.ema = WeightEMA(self.model, ema_decay) if ema_decay > 0 else None
        if self.context.resume_from is not None:
            self.load_checkpoint(self.context.resume_from)
        # Wrapped last: DDP broadcasts rank 0's weights, which must already be the resumed ones.
        wrap = self.context.wrap_model
        self.trained_module = wrap(self.model) if wrap else self.model
        if self.context.is_main:
            self.reporter.info(self.run_info())

    def _setup_batches(self, data: Datasets) -> None:
        batch_size, device = self.train_spec.batch_size, self.device
        rank, world = self.context.rank, self.context.world_size
        # Data order is a function of (seed, epoch) alone, so resuming needs no sampler state.
        self.train_batches = TrainBatches(
            data.train, batch_size, self.train_spec.seed, device, rank, world
        )
        batches = len(self.train_batches)
        self.steps_per_epoch = min(batches, self.train_spec.max_steps_per_epoch or batches)
        self.val_batches = EvaluationBatches(data.val, batch_size, device, rank, world)
        self.test_batches = EvaluationBatches(data.test, batch_size, device, rank, world)
        self.visual_batch = data.val.batch(torch.arange(min(VISUAL_IMAGES, len(data.val))))

    def run_info(self) -> dict[str, Any]:
        shape = self.data.shape
        return {
            "model": self.spec.model.type,
            "objective": self.model.objective,
            "likelihood": likelihood_kind(self.model),
            "dataset": self.spec.data.dataset,
            "shape": [shape.channels, shape.height, shape.width],
            "levels": shape.levels,
            "dims": shape.dims,
            "binarization": self.data.binarization,
            "num_classes": self.data.num_classes,
            "train_images": len(self.data.train),
            "val_images": len(self.data.val),
            "test_images": len(self.data.test),
            "test_split": self.data.test_split,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.context.world_size,
            "ema": self.train_spec.ema_decay,  # 0.0: evaluated with the live weights
        }

    def train(self) -> dict[str, Any]:
        last: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
        epochs = self.train_spec.epochs
        for epoch in range(self.epoch + 1, epochs + 1):
            final = epoch == epochs
            metrics: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
            if final or epoch % self.train_spec.eval_every == 0:
                metrics.update(self.evaluate(final))
                if self.context.is_main:
                    metrics.update(self.sample_quality())
            test_every = self.train_spec.test_every
            if final or (test_every is not None and epoch % test_every == 0):
                # Always the final settings (the VAE's iw_samples_final): a paper's number.
                metrics.update(self.evaluate(True, "test"))
            if self.context.is_main and (final or epoch % self.train_spec.sample_every == 0):
                self.sample(epoch)
            self.epoch = epoch
            if final or epoch % self.train_spec.checkpoint_every == 0:
                self.save_checkpoint(epoch)
            self.reporter.metrics(metrics)
            last = metrics
        return last

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.trained_module.train()
        sums = MetricSums(self.device)
        images_seen = torch.zeros((), dtype=torch.float64, device=self.device)
        started = time.perf_counter()
        for batch, (images, labels) in enumerate(self.train_batches.epoch(epoch), start=1):
            # A no-op for a split held on the device; a split too large for it travels here.
            images, labels = images.to(self.device), labels.to(self.device)
            self.train_step(epoch, images, labels, sums)
            images_seen += len(images)
            if self.context.on_batch is not None:
                self.context.on_batch(epoch, batch, self.steps_per_epoch)
            if batch == self.steps_per_epoch:
                break
        elapsed = time.perf_counter() - started
        images_per_s = all_reduce_sum(images_seen).item() / elapsed
        means = with_bits_per_dim(sums.reduce_means(), "train_", self.dims)
        lr = self.optimizers[self.model.phases[0]].param_groups[0]["lr"]
        return {"step": self.step, "lr": lr, "images_per_s": images_per_s, **means}

    def train_step(self, epoch: int, images: Tensor, labels: Tensor, sums: MetricSums) -> None:
        """One batch: an optimizer step per phase, then the weight EMA."""
        for phase in self.model.phases:
            terms = self.train_phase(epoch, phase, images, labels)
            sums.add(terms, "train_" if phase == "train" else f"train_{phase}_")
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1

    def train_phase(
        self, epoch: int, phase: str, images: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        optimizer = self.optimizers[phase]
        optimizer.zero_grad(set_to_none=True)
        use_bf16 = self.train_spec.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            terms = self.trained_module(images, labels, phase)
        loss = terms["loss"].float().mean()
        self._stop_if_needed(epoch, phase, loss)
        loss.backward()
        if self.train_spec.grad_clip is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.train_spec.grad_clip)
        optimizer.step()
        self.schedulers[phase].step()
        return terms

    def _stop_if_needed(self, epoch: int, phase: str, loss: Tensor) -> None:
        """Raise on a non-finite loss or a cancel, on every rank together (none may hang in DDP)."""
        asked_to_stop = 1.0 if self.context.should_stop() else 0.0
        not_finite = (~torch.isfinite(loss.detach())).double()
        flags = torch.stack([not_finite, loss.new_tensor(asked_to_stop, dtype=torch.float64)])
        non_finite, stop = all_reduce_sum(flags).tolist()
        if non_finite:
            raise NonFiniteLossError(epoch, self.step + 1, phase, loss.item())
        if stop:
            raise TrainingCancelled(f"cancelled at epoch {epoch}, step {self.step + 1}")

    @property
    def inference_model(self) -> GenerativeModel:
        """The EMA weights when `train.ema_decay` keeps them, else the live weights."""
        return self.ema.model if self.ema is not None else self.model

    def evaluate(self, final: bool, split: EvaluationSplit = "val") -> dict[str, float]:
        """`<split>_<key>` means over the whole split; `final` asks models for costly metrics."""
        batches = self.val_batches if split == "val" else self.test_batches
        with evaluation_mode(self.inference_model) as model:
            return evaluate_split(model, batches, f"{split}_", final, self.device)

    def sample_quality(self) -> dict[str, float]:
        """`val_fcd`: Frechet classifier distance of fixed-seed samples to val images (rank 0)."""
        classifier = self._feature_classifier()
        if classifier is None:
            return {}
        count = min(FCD_IMAGES, len(self.data.val))
        real, _ = self.data.val.batch(torch.arange(count))  # (N, C, H, W)
        labels = (torch.arange(count) % self.data.num_classes).to(self.device)
        with evaluation_mode(self.inference_model) as model:
            fake = model.sample(labels, torch.Generator().manual_seed(self.train_spec.seed))
        levels = self.data.shape.levels
        return {"val_fcd": classifier_frechet_distance(classifier, real, fake.cpu(), levels)}

    def _feature_classifier(self) -> FeatureClassifier | None:
        """Trained on first use (cached beside the checkpoints); None where FCD does not apply."""
        if self.model.objective not in FCD_OBJECTIVES or self.data.num_classes < 2:
            return None
        if self.classifier is None:
            count = min(FCD_CLASSIFIER_IMAGES, len(self.data.train))
            images, labels = self.data.train.batch(torch.arange(count))
            self.classifier = train_feature_classifier(
                images,
                labels,
                self.data.shape.levels,
                FCD_CLASSIFIER_EPOCHS,
                self.train_spec.seed,
                cache_path=self.context.checkpoint_dir / "fcd-classifier.pt",
            )
        return self.classifier

    def sample(self, epoch: int) -> None:
        """Sample grids from the same noise every time, so epochs and runs compare by eye."""
        count, levels = self.train_spec.num_samples, self.data.shape.levels
        labels = (torch.arange(count) % self.data.num_classes).to(self.device)
        images, image_labels = (tensor.to(self.device) for tensor in self.visual_batch)
        with evaluation_mode(self.inference_model) as model:
            samples = model.sample(labels, torch.Generator().manual_seed(self.train_spec.seed))
            self.reporter.image("samples", epoch, levels_to_png(samples, levels))
            generator = torch.Generator().manual_seed(self.train_spec.seed)
            for name, grid in model.visuals(images, image_labels, generator).items():
                png = levels_to_png(grid, levels, nrow=VISUAL_IMAGES)
                self.reporter.image(name, epoch, png)

    def save_checkpoint(self, epoch: int) -> None:
        rng_states = gather_from_ranks(checkpoint.rng_state(self.device))
        if not self.context.is_main:
            return
        state = {
            "model_type": self.spec.model.type,
            "spec": self.spec.model_dump(mode="json"),  # `genfleet evaluate DIR` rebuilds from it
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {phase: opt.state_dict() for phase, opt in self.optimizers.items()},
            "schedulers": {phase: s.state_dict() for phase, s in self.schedulers.items()},
            "rng": rng_states,  # one per rank, each rank's own noise continues on resume
        }
        root = self.context.checkpoint_dir
        folder = checkpoint.save_checkpoint(checkpoint.checkpoint_folder(root, epoch), state)
        checkpoint.prune_checkpoints(root, self.context.keep_checkpoints)
        self.reporter.checkpoint(epoch, folder)

    def load_checkpoint(self, folder: Path) -> None:
        state = checkpoint.load_checkpoint(folder)
        if state.get("model_type") != self.spec.model.type:
            raise checkpoint.CheckpointError(
                f"checkpoint: {folder} holds a {state.get('model_type')!r} model, "
                f"the spec trains {self.spec.model.type!r}"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        for phase, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][phase])
            self.schedulers[phase].load_state_dict(state["schedulers"][phase])
        self.epoch, self.step = state["epoch"], state["step"]
        if self.context.rank < len(state["rng"]):
            checkpoint.restore_rng_state(state["rng"][self.context.rank], self.device)
        if self.context.is_main:
            self.reporter.log(f"resumed from {folder} after epoch {self.epoch}, step {self.step}")

    def cleanup(self) -> None:
        """Drop the model, optimizer state and data, so a reused Tune actor starts out empty."""
        for name in ("model", "trained_module", "ema", "optimizers", "schedulers", "data"):
            self.__dict__.pop(name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def evaluate_split(
    model: GenerativeModel,
    batches: EvaluationBatches,
    prefix: str,
    final: bool,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Means of the model's per-image terms over every rank's `batches`, with bits/dim.

    Noise a bound draws (the VAE's importance samples) comes from EVALUATION_SEED on a forked
    generator: `genfleet evaluate` then reproduces the run's own number, and training's random
    stream does not depend on how often it evaluates.
    """
    sums = MetricSums(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVALUATION_SEED)
        for batch, (images, labels) in enumerate(batches, start=1):
            sums.add(model.evaluate(images.to(device), labels.to(device), final), prefix)
            if on_batch is not None:
                on_batch(batch, len(batches))
    return with_bits_per_dim(sums.reduce_means(), prefix, model.shape.dims)


def likelihood_kind(model: GenerativeModel) -> str:
    if model.objective == "exact_likelihood":
        return "exact"
    if model.objective == "elbo":
        every, last = model.importance_samples(final=False), model.importance_samples(final=True)
        return f"bound (IWAE k={every}, k={last} at the last epoch)"
    return "none"


@contextmanager
def evaluation_mode(model: GenerativeModel) -> Iterator[GenerativeModel]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
