"""Experiment trackers, TensorBoard and MLflow, fed from the Reporter calls the loop makes (issue 16).

`TrackingReporter` wraps a run's reporter: it forwards every call and also sends run info,
metrics and sample grids to each tracker the spec's `logging` section turns on. A tracker never
ends a training run: the first error one raises costs one warning line through the inner
reporter, and that tracker is sent nothing more but its close, which still ends its MLflow run
if the server answers again. Only rank 0 tracks: the loop calls `metrics` on every rank, so
`build_trackers` gives the other ranks none.

Workers that are killed (a cancel, a lost lease, a dead node) never close their trackers: the
dispatcher ends such a job's MLflow runs with `end_open_runs`. Each attempt of a job tags its
MLflow run with its number, and an older attempt never ends or reopens a run a newer one holds.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from PIL import Image

from jobs.spec import JobSpec, MlflowSpec
from trainers.loop import TrainingCancelled
from trainers.reporter import Reporter, image_file_name

# MLflow's client retries a failed request 7 times with exponential backoff (about 4 minutes)
# and waits 120 s for each answer: a lost server would stall training that long. A run stops
# sending after the first failure, so it needs few retries. An operator's own values win.
MLFLOW_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
MLFLOW_PARAMS_PER_REQUEST = 100  # the most one log_batch call takes
PARAM_SECTIONS = ("model", "train", "data", "scaling")  # what a run trained, logged as params
MAX_WARNING_CHARS = 300  # MLflow errors quote whole retry chains: the first line is enough
JOB_TAG, TRIAL_TAG, ATTEMPT_TAG = "genfleet.job_id", "genfleet.trial", "genfleet.attempt"


class RunOutcome(StrEnum):
    """How a tracked run ended; the values are MLflow's run statuses."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"  # stopped on purpose: a cancel, Ctrl-C, the dispatcher stopping its copy


def outcome_of(exc: BaseException | None) -> RunOutcome:
    """The outcome of a run that `exc` ended (None: it ran to its last epoch)."""
    if exc is None:
        return RunOutcome.FINISHED
    # Tune ends a trial it stops early (ASHA) with SystemExit from inside its report.
    if isinstance(exc, TrainingCancelled | KeyboardInterrupt | SystemExit):
        return RunOutcome.KILLED
    return RunOutcome.FAILED


class Tracker(Protocol):
    name: str  # its key under the spec's `logging`
    location: str  # where its records go, for the run's log

    def info(self, info: dict[str, Any]) -> None: ...

    def metrics(self, metrics: dict[str, Any]) -> None: ...

    def image(self, name: str, epoch: int, png: bytes) -> None: ...

    def close(self, outcome: RunOutcome) -> None: ...


@dataclass(frozen=True)
class TrackedRun:
    """The run trackers record: where its event files go and which ids tag its MLflow run."""

    tensorboard_dir: str  # a local folder, or a storage URI the files are copied to each epoch
    job_id: str | None = None  # None for `genfleet run-local`
    trial: str | None = None  # a sweep trial's id
    attempt: int | None = None  # the queue's attempt number (JobRecord.attempts) of the job


def build_trackers(
    spec: JobSpec, run: TrackedRun, log: Callable[[str], None], is_main: bool
) -> list[Tracker]:
    """The trackers `spec.logging` turns on; one that cannot start is left out with a warning."""
    if not is_main:
        return []
    starters: list[tuple[str, Callable[[], Tracker]]] = []
    if spec.logging.tensorboard:
        starters.append(("tensorboard", lambda: TensorBoardTracker(run.tensorboard_dir)))
    mlflow = spec.logging.mlflow
    if mlflow is not None:
        starters.append(("mlflow", lambda: MlflowTracker(mlflow, spec, run)))
    trackers = []
    for name, start in starters:
        try:
            tracker = start()
        except Exception as exc:  # a tracker never ends a training run
            log(tracker_warning(name, "start", exc))
            continue
        log(f"{name}: {tracker.location}")
        trackers.append(tracker)
    return trackers


class TrackingReporter:
    """Forwards every Reporter call to `inner` and info, metrics and images to `trackers`.

    A context manager: leaving it closes the trackers, as `outcome_of` the exception, if any.
    """

    def __init__(self, inner: Reporter, trackers: list[Tracker]) -> None:
        self.inner = inner
        self.trackers = list(trackers)  # all are closed, also those that stopped sending
        self.sending = list(trackers)

    def info(self, info: dict[str, Any]) -> None:
        self.inner.info(info)
        self._send("info", lambda tracker: tracker.info(info))

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.inner.metrics(metrics)
        self._send("metrics", lambda tracker: tracker.metrics(metrics))

    def image(self, name: str, epoch: int, png: bytes) -> None:
        self.inner.image(name, epoch, png)
        self._send("image", lambda tracker: tracker.image(name, epoch, png))

    def checkpoint(self, epoch: int, path: Path) -> None:
        self.inner.checkpoint(epoch, path)

    def log(self, line: str) -> None:
        self.inner.log(line)

    def close(self, outcome: RunOutcome) -> None:
        """Flush and close every tracker, each ending its run as `outcome` where it can.

        A tracker that stopped sending is closed too (an MLflow server back after a blip ends
        the run instead of leaving it RUNNING); failing again, it costs no second warning.
        """
        for tracker in self.trackers:
            try:
                tracker.close(outcome)
            except Exception as exc:  # a tracker never ends a training run
                if tracker in self.sending:
                    self.inner.log(tracker_warning(tracker.name, "close", exc))
        self.trackers, self.sending = [], []

    def __enter__(self) -> TrackingReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(outcome_of(exc))

    def _send(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.sending):
            try:
                call(tracker)
            except Exception as exc:  # a tracker never ends a training run
                self.sending.remove(tracker)
                self.inner.log(tracker_warning(tracker.name, what, exc))


def tracker_warning(name: str, what: str, exc: Exception) -> str:
    """One line: which tracker failed at what, why, and that the run goes on without it."""
    return (
        f"warning: {name} tracking stopped, the run goes on without it: "
        f"{what} failed with {first_line(exc)}"
    )


def first_line(exc: Exception) -> str:
    """`ConnectionError: ...`: an error's type and its message's first line, shortened."""
    reason = (str(exc).strip().splitlines() or [""])[0][:MAX_WARNING_CHARS]
    return f"{type(exc).__name__}: {reason}"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's numeric metrics, without `epoch` itself: trackers use it as the step."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }


def spec_params(spec: JobSpec) -> dict[str, str]:
    """`model.params.layers`, `train.lr`, ...: the spec's PARAM_SECTIONS flattened, values as
    JSON text (`true`, `null`, `[1, 2]`) except strings, which stay as they are."""
    dumped = spec.model_dump(mode="json")
    return _flatten({section: dumped[section] for section in PARAM_SECTIONS}, "")


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


class TensorBoardTracker:
    """Event files in one folder: each metric a scalar and each grid an image, step = epoch.

    SummaryWriter writes local files only, so for a storage URI (s3://...) they are written to a
    local folder and copied to the URI after every epoch and at close, with pyarrow (Ray's own
    storage layer): a worker killed outright loses at most its last epoch's records.
    """

    name = "tensorboard"

    def __init__(self, folder: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the extra: only when asked for

        self.destination = folder if "://" in folder else None
        self.local_dir = (
            tempfile.mkdtemp(prefix="genfleet-tensorboard-") if self.destination else folder
        )
        self.location = f"event files in {folder}"
        self.writer = SummaryWriter(log_dir=self.local_dir)

    def info(self, info: dict[str, Any]) -> None:
        # Indented: TensorBoard renders text as Markdown, where that is a code block.
        text = json.dumps(info, indent=2).replace("\n", "\n    ")
        self.writer.add_text("run_info", "    " + text)

    def metrics(self, metrics: dict[str, Any]) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, metrics["epoch"])
        self.writer.flush()  # TensorBoard shows each epoch as it ends, not every 2 minutes
        self._copy_to_destination()  # the loop sends an epoch's grids before its metrics

    def image(self, name: str, epoch: int, png: bytes) -> None:
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(name, pixels, epoch, dataformats="HWC")

    def close(self, outcome: RunOutcome) -> None:
        del outcome  # event files have no run status
        self.writer.close()
        self._copy_to_destination()
        if self.destination is not None:
            shutil.rmtree(self.local_dir)

    def _copy_to_destination(self) -> None:
        """Copy the event files to the storage URI, whole: each copy replaces the last."""
        if self.destination is None:
            return
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.destination)
        filesystem.create_dir(path)  # a local or NFS destination needs its folders
        fs.copy_files(self.local_dir, path, destination_filesystem=filesystem)


def mlflow_client(tracking_uri: str) -> Any:
    """An MlflowClient for `tracking_uri` whose HTTP retries MLFLOW_HTTP_LIMITS bound."""
    for variable, value in MLFLOW_HTTP_LIMITS.items():
        os.environ.setdefault(variable, value)
    from mlflow import MlflowClient  # the extra: only when asked for

    return MlflowClient(tracking_uri=tracking_uri)


def is_superseded(run: Any, attempt: int | None) -> bool:
    """A newer attempt of the job holds this MLflow run: `attempt` must not end or reopen it.

    Two attempts can be alive at once: a dispatcher that lost its lease stops its copy only on
    its next tick, while another one already resumed the job.
    """
    holder = run.data.tags.get(ATTEMPT_TAG, "")
    return attempt is not None and holder.isdigit() and int(holder) > attempt


def end_open_runs(
    spec: JobSpec, job_id: str, attempt: int, outcome: RunOutcome, log: Callable[[str], None]
) -> list[str]:
    """End the job's MLflow runs still RUNNING as `outcome`, except those of newer attempts.

    For the dispatcher, which stops runs by killing their processes (a cancel, a lost lease) or
    finds their workers killed, so no tracker closed them. Never raises: a failure costs one
    line through `log`. Returns the ids of the runs it ended.
    """
    settings = spec.logging.mlflow
    if settings is None or importlib.util.find_spec("mlflow") is None:
        return []
    try:
        client = mlflow_client(settings.tracking_uri)
        return _end_open_runs(client, settings.experiment, job_id, attempt, outcome)
    except Exception as exc:  # the job's own end is recorded already; the tracker's is extra
        log(f"warning: mlflow: could not end the job's open runs as {outcome}: {first_line(exc)}")
        return []


def _end_open_runs(
    client: Any, experiment: str, job_id: str, attempt: int, outcome: RunOutcome
) -> list[str]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    # Job ids are generated: [0-9a-z_-], safe to quote.
    query = f"tags.`{JOB_TAG}` = '{job_id}' and attributes.status = 'RUNNING'"
    ended = []
    for run in client.search_runs([found.experiment_id], query):  # a sweep: one per trial
        if not is_superseded(run, attempt):
            client.set_terminated(run.info.run_id, status=outcome.value)
            ended.append(run.info.run_id)
    return ended


class MlflowTracker:
    """One MLflow run: the spec as params, metrics per epoch (step = epoch), grids as PNGs.

    A run with a job id continues the MLflow run tagged with that job and trial, if there is
    one: a job that Ray Train restarts or the queue retries stays one MLflow run, tagged with
    the attempt that holds it now.
    """

    name = "mlflow"

    def __init__(self, settings: MlflowSpec, spec: JobSpec, run: TrackedRun) -> None:
        self.client = mlflow_client(settings.tracking_uri)
        self.attempt = run.attempt
        experiment_id = self._experiment_id(settings.experiment)
        self.run_id = self._open_run(experiment_id, spec.name, run)
        self.location = (
            f"run {self.run_id} in experiment {settings.experiment!r} at {settings.tracking_uri}"
        )
        try:
            self._log_params(spec_params(spec))
        except Exception:
            # The tracker is left out, so nothing would close the run it just opened.
            with suppress(Exception):
                self.close(RunOutcome.FAILED)
            raise

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another trial of the sweep created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _open_run(self, experiment_id: str, spec_name: str, run: TrackedRun) -> str:
        tags = {JOB_TAG: run.job_id, TRIAL_TAG: run.trial}
        tags = {key: value for key, value in tags.items() if value is not None}
        if run.job_id is not None:  # job and trial ids are generated: [0-9a-z_-], safe to quote
            query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
            found = self.client.search_runs([experiment_id], query, max_results=1)
            if found:
                return self._reopen(found[0])
        if run.attempt is not None:
            tags[ATTEMPT_TAG] = str(run.attempt)
        run_name = f"{spec_name} {run.trial}" if run.trial else spec_name
        return self.client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id

    def _reopen(self, found: Any) -> str:
        """Continue an earlier attempt's (or Ray Train start's) run, as this attempt's."""
        run_id = found.info.run_id
        if not is_superseded(found, self.attempt):  # an older copy logs on, about to be stopped
            if self.attempt is not None:  # tagged first: the status alone looks like the old one
                self.client.set_tag(run_id, ATTEMPT_TAG, str(self.attempt))
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(entries), MLFLOW_PARAMS_PER_REQUEST):
            chunk = entries[start : start + MLFLOW_PARAMS_PER_REQUEST]
            self.client.log_batch(self.run_id, params=chunk)

    def info(self, info: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, info, "info.json")

    def metrics(self, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp, epoch = int(time.time() * 1000), metrics["epoch"]
        entries = [Metric(key, value, stamp, epoch) for key, value in scalars(metrics).items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def image(self, name: str, epoch: int, png: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="genfleet-mlflow-") as folder:
            path = Path(folder) / image_file_name(name, epoch)
            path.write_bytes(png)
            self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def close(self, outcome: RunOutcome) -> None:
        # Read, then written: MLflow has no compare-and-set, and the window is one request.
        if self.attempt is not None and is_superseded(
            self.client.get_run(self.run_id), self.attempt
        ):
            return  # the newer attempt ends the run
        self.client.set_terminated(self.run_id, status=outcome.value)
