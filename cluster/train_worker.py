"""The Ray Train worker function: the one training loop (trainers/loop.py) inside a Train worker.

`trainers/` is pure PyTorch; this is where it meets `ray.train`. Metrics go to
`ray.train.report` (with the epoch's checkpoint attached, so Ray Train persists it to storage
and restores it after a worker failure) and, from rank 0, to the dispatcher's relay actor,
together with sample grids, log lines and where each checkpoint lies; a new claim of the job
starts from the checkpoint in the loop config's `resume_from`. The relay, the job id, its
attempt number and the trial id come in the loop config. The spec's trackers
(trainers/trackers.py) write from rank 0: TensorBoard event files to `<run_dir>/tensorboard`,
where each sweep trial has a run_dir of its own.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from torch import nn

from cluster.ray_runtime import placement_group_id, train_controller
from jobs.failures import NotRetryable
from jobs.messages import (
    Checkpoint,
    Controller,
    Fatal,
    Image,
    Log,
    Message,
    Metrics,
    RunInfo,
    Unrecoverable,
    Worker,
)
from jobs.spec import JobSpec
from trainers.generative_model import GenerativeModel
from trainers.loop import NonFiniteLossError, RunContext, train_job
from trainers.trackers import TrackedRun, TrackingReporter, build_trackers


class RayReporter:
    """Reports each epoch to Ray Train from every rank; relays the rest from rank 0."""

    def __init__(
        self, relay: Any, trial: str | None, group: str | None, checkpoint_root: str, is_main: bool
    ) -> None:
        self.relay = relay
        self.trial = trial
        self.group = group  # this worker group's placement group, on every message it sends
        self.checkpoint_root = checkpoint_root  # where Ray Train persists this run's checkpoints
        self.is_main = is_main
        self._pending_checkpoint: Path | None = None
        self._last_sent: ray.ObjectRef | None = None

    def _send(self, message: Message) -> None:
        self._last_sent = self.relay.put.remote(message)

    def flush(self) -> None:
        """Wait until the relay holds everything sent so far.

        Ray Train ends a worker soon after its last report, and a message still on its way
        from a process that is gone is lost: without this, the last epoch's metrics sometimes
        never reached the store. One caller's calls to an actor run in order, so waiting for
        the last one is enough.

        A relay that is gone was killed by the dispatcher, which has finished with the job
        (it forgets a job once its runner returned, was cancelled or lost its lease): nobody
        is left to deliver to, and a training that did finish must not fail for it. Under
        load a sweep trial met this at its last flush (genfleet issue 13's CI runs).
        """
        if self._last_sent is None:
            return
        with suppress(ray.exceptions.RayActorError):
            ray.get(self._last_sent)

    def info(self, info: dict[str, Any]) -> None:
        self._send(RunInfo(info, self.trial, self.group))

    def metrics(self, metrics: dict[str, Any]) -> None:
        """Relay the epoch's row, report it with its checkpoint, then relay the checkpoint.

        In that order, every checkpoint the store records has its epoch's row there before
        it: a run stopped in between resumes from an older checkpoint and reports that epoch
        again, which the store keeps once (it rewinds the curve).
        """
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        if self.is_main:
            self._send(Metrics(metrics, self.trial, self.group))
        if pending is None:
            ray.train.report(metrics)  # every rank: it is a barrier
            return
        checkpoint = ray.train.Checkpoint.from_directory(str(pending))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=pending.name)
        if self.is_main:
            persisted = f"{self.checkpoint_root}/{pending.name}"
            self._send(Checkpoint(metrics["epoch"], persisted, self.trial, self.group))

    def image(self, name: str, epoch: int, png: bytes) -> None:
        self._send(Image(name, epoch, png, self.trial, self.group))

    def checkpoint(self, epoch: int, path: Path) -> None:
        del epoch  # attached to this epoch's metrics report
        self._pending_checkpoint = path

    def log(self, line: str) -> None:
        self._send(Log(line, self.trial, self.group))

    def fatal(self, error: str) -> None:
        self._send(Fatal(error, self.trial, self.group))

    def unrecoverable(self, error: str) -> None:
        self._send(Unrecoverable(error, self.trial, self.group))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = JobSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    relay, trial = config["relay"], config["trial"]
    node_id = ray.get_runtime_context().get_node_id()
    group = placement_group_id()
    relay.put.remote(Worker(rank, os.getpid(), node_id, group, trial, time.time()))
    controller = train_controller()
    if rank == 0 and controller is not None:
        relay.put.remote(Controller(controller, trial))

    with ExitStack() as stack:
        # Ray Train's own after it restarted a worker within this claim; else what the
        # runner chose for the claim, the same for every rank.
        restored = ray.train.get_checkpoint()
        if restored is None and config["resume_from"] is not None:
            restored = ray.train.Checkpoint(config["resume_from"])
        resume_from = Path(stack.enter_context(restored.as_directory())) if restored else None
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="genfleet-ckpt-")))
        run_context = RunContext(
            data_dir=Path(config["data_dir"]),
            checkpoint_dir=scratch,
            device=ray.train.torch.get_device(),
            rank=rank,
            world_size=world_size,
            wrap_model=_ddp_wrapper(world_size),
            resume_from=resume_from,
        )
        reporter = RayReporter(relay, trial, group, config["checkpoint_root"], is_main=rank == 0)
        run = TrackedRun(
            f"{config['run_dir']}/tensorboard", config["job_id"], trial, config["attempt"]
        )
        trackers = build_trackers(spec, run, reporter.log, is_main=rank == 0)
        try:
            # Inside the try: a diverged run, caught below, closes its trackers as failed.
            with TrackingReporter(reporter, trackers) as tracked:
                train_job(spec, tracked, run_context)
        except NonFiniteLossError as exc:
            # Every rank raises it together. Ray Train would restart the run from its last
            # checkpoint max_failures times and diverge the same way each time, so end the run
            # here and tell the dispatcher, which fails the job without retrying.
            if rank == 0:
                reporter.fatal(f"NonFiniteLossError: {exc}")
        except NotRetryable as exc:
            # This rank may be alone with it (a file its node cannot read), and the others must
            # not wait for it in a collective: the group fails as on any error. Told first, the
            # dispatcher fails the job without a retry if Ray Train's restarts fail too.
            reporter.unrecoverable(f"{type(exc).__name__}: {exc}")
            reporter.flush()
            raise
        reporter.flush()


def _ddp_wrapper(world_size: int) -> Any:
    def wrap(model: GenerativeModel) -> nn.Module:
        # A GAN's discriminator phase leaves the generator's parameters unused (and vice
        # versa), which DDP only tolerates when told to look for unused parameters.
        return ray.train.torch.prepare_model(
            model,
            parallel_strategy="ddp" if world_size > 1 else None,
            parallel_strategy_kwargs={"find_unused_parameters": len(model.phases) > 1},
        )

    return wrap
