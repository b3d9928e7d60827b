"""The one training loop (trainers/loop.py) on Ray: in a Ray Train worker, or directly in one
pre-started process for a one-worker run (cluster/warm_runner.py).

`trainers/` is pure PyTorch; this is where it meets Ray. In a Train worker, metrics go to
`ray.train.report` (with the epoch's checkpoint attached, so Ray Train persists it to storage
and restores it after a worker failure); run directly, the checkpoint is copied to the same
folder of storage under the same name. Either way, metrics go from rank 0 to the dispatcher's
relay actor, together with sample grids, log lines and where each checkpoint lies; a new claim
of the job starts from the checkpoint in the loop config's `resume_from`. The relay, the job
id, its attempt number and the trial id come in the loop config. The spec's trackers
(trainers/trackers.py) write from rank 0: TensorBoard event files to `<run_dir>/tensorboard`,
where each sweep trial has a run_dir of its own.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
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
from jobs.run_storage import located
from jobs.spec import JobSpec, SpecError, missing_tracker_packages
from trainers.checkpoint import STATE_FILE
from trainers.generative_model import GenerativeModel
from trainers.loop import NonFiniteLossError, RunContext, train_job
from trainers.trackers import TrackedRun, TrackingReporter, build_trackers

LOCAL = pyarrow.fs.LocalFileSystem()

# Report an epoch's metrics with its checkpoint folder (None: none this epoch) on every rank;
# the URI the checkpoint now lies at in storage, or None.
Persist = Callable[[dict[str, Any], Path | None], str | None]


class RayReporter:
    """Persists each epoch's checkpoint from every rank; relays the rest from rank 0."""

    def __init__(
        self,
        relay: Any,
        trial: str | None,
        group: str | None,
        persist: Persist,
        is_main: bool,
        report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.relay = relay
        self.trial = trial
        self.group = group  # this worker group's placement group, on every message it sends
        self.persist = persist
        self.is_main = is_main
        self.report = report  # a direct trial's `tune.report`, last of an epoch's reports
        self.last_checkpoint: str | None = None  # the URI of the newest one persisted
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
        persisted = self.persist(metrics, pending)
        if persisted is not None and self.is_main:
            self.last_checkpoint = persisted
            self._send(Checkpoint(metrics["epoch"], persisted, self.trial, self.group))
        if self.report is not None:
            # Tune ends a trial it stops (ASHA) inside its report, with SystemExit: what this
            # epoch sent is in the relay by then.
            self.flush()
            self.report(metrics)

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
        persist = report_to_ray_train(config["checkpoint_root"])
        reporter = RayReporter(relay, trial, group, persist, is_main=rank == 0)
        _train_telling_failures(config, spec, reporter, run_context)


def train_directly(
    config: dict[str, Any],
    report: Callable[[dict[str, Any]], None] | None = None,
    keep_checkpoints: int | None = None,
) -> dict[str, Any]:
    """Run a one-worker job or sweep trial in this process, with no Ray Train worker group;
    the result as cluster/job_runner.py's for a Train run. `report` also gets each epoch's
    metrics, after its checkpoint is in storage: a trial's `tune.report`. The newest
    `keep_checkpoints` checkpoints are kept, as Ray Train keeps a trial's (None: all, for the
    dispatcher to prune).

    This process stands for the worker group: its actor id is the group every message names,
    so that a run restarted in another process is told apart from this one.
    """
    spec = JobSpec.model_validate(config["spec"])
    relay, trial = config["relay"], config["trial"]
    if lacks_tracker_packages(spec, relay):
        return {}
    runtime = ray.get_runtime_context()
    group = runtime.get_actor_id()
    worker = Worker(0, os.getpid(), runtime.get_node_id(), None, trial, time.time(), group)
    relay.put.remote(worker)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="genfleet-ckpt-")))
        resume_from = None
        if config["resume_from"] is not None:
            resume_from = _downloaded(config["resume_from"], scratch / "resumed")
        run_context = RunContext(
            data_dir=Path(config["data_dir"]),
            checkpoint_dir=scratch / "written",
            device=torch.device("cpu"),
            resume_from=resume_from,
        )
        persist = copy_to_storage(config["checkpoint_root"], keep_checkpoints)
        reporter = RayReporter(relay, trial, group, persist, is_main=True, report=report)
        metrics = _train_telling_failures(config, spec, reporter, run_context)
    return {
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float | str)},
        # A restart after the last epoch's checkpoint trains nothing: that one is the result.
        "checkpoint": reporter.last_checkpoint or config["resume_from"],
        "storage": config["checkpoint_root"],
    }


def lacks_tracker_packages(spec: JobSpec, relay: Any) -> bool:
    """Whether the spec's trackers need a package this cluster lacks; if so the run stops
    before it starts, with a fatal report.

    The client checked where the spec was submitted; this cluster may still lack the extra,
    and every retry would too: a fatal report fails the job without one.
    """
    missing = missing_tracker_packages(spec.logging)
    if missing:
        ray.get(relay.put.remote(Fatal(str(SpecError(missing)))))
    return bool(missing)


def report_to_ray_train(checkpoint_root: str) -> Persist:
    """Every rank reports (it is a barrier); Ray Train persists the checkpoint under
    `checkpoint_root` and restores it after a worker failure."""

    def persist(metrics: dict[str, Any], folder: Path | None) -> str | None:
        if folder is None:
            ray.train.report(metrics)
            return None
        checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=folder.name)
        return f"{checkpoint_root}/{folder.name}"

    return persist


def copy_to_storage(checkpoint_root: str, keep: int | None = None) -> Persist:
    """The checkpoint copied to `checkpoint_root/<its folder's name>`, its state file last and
    whole (written aside, then moved), so a folder with one is a checkpoint to resume from;
    the oldest beyond the newest `keep` deleted."""
    filesystem, root = located(checkpoint_root)
    written: list[str] = []

    def persist(metrics: dict[str, Any], folder: Path | None) -> str | None:
        del metrics  # the relay has them
        return None if folder is None else copied(folder)

    def copied(folder: Path) -> str:
        target = f"{root}/{folder.name}"
        filesystem.create_dir(target, recursive=True)
        for path in sorted(folder.iterdir(), key=lambda path: path.name == STATE_FILE):
            partial = f"{target}/{path.name}.partial"
            pyarrow.fs.copy_files(str(path), partial, destination_filesystem=filesystem)
            filesystem.move(partial, f"{target}/{path.name}")
        written.append(target)
        while keep is not None and len(written) > keep:
            filesystem.delete_dir(written.pop(0))
        return f"{checkpoint_root.rstrip('/')}/{folder.name}"

    return persist


def _downloaded(uri: str, folder: Path) -> Path:
    filesystem, path = located(uri)
    folder.mkdir(parents=True)
    pyarrow.fs.copy_files(
        path, str(folder), source_filesystem=filesystem, destination_filesystem=LOCAL
    )
    return folder


def _train_telling_failures(
    config: dict[str, Any], spec: JobSpec, reporter: RayReporter, context: RunContext
) -> dict[str, Any] | None:
    """Train with the spec's trackers (from rank 0), telling the dispatcher of a failure a retry
    would repeat before it ends the run; the last epoch's metrics, None if the loss diverged."""
    run = TrackedRun(
        f"{config['run_dir']}/tensorboard", config["job_id"], config["trial"], config["attempt"]
    )
    trackers = build_trackers(spec, run, reporter.log, is_main=context.is_main)
    metrics = None
    try:
        # Inside the try: a diverged run, caught below, closes its trackers as failed.
        with TrackingReporter(reporter, trackers) as tracked:
            metrics = train_job(spec, tracked, context)
    except NonFiniteLossError as exc:
        # Every rank raises it together. Ray Train would restart the run from its last
        # checkpoint max_failures times and diverge the same way each time, so end the run
        # here and tell the dispatcher, which fails the job without retrying.
        if context.is_main:
            reporter.fatal(f"NonFiniteLossError: {exc}")
    except NotRetryable as exc:
        # This rank may be alone with it (a file its node cannot read), and the others must
        # not wait for it in a collective: the group fails as on any error. Told first, the
        # dispatcher fails the job without a retry if Ray Train's restarts fail too.
        reporter.unrecoverable(f"{type(exc).__name__}: {exc}")
        reporter.flush()
        raise
    reporter.flush()
    return metrics


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
