"""Experiment trackers: TensorBoard event files and MLflow runs, read back with their own readers.

MLflow runs against a real `mlflow server` on a free loopback port (sqlite store, artifacts under
tmp_path). TensorBoard files are read with TensorBoard's EventAccumulator. The `ray` tests run
jobs through a real dispatcher on a local Ray cluster (`-m "not ray"` leaves them out).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jobs.records import JobStatus
from jobs.spec import JobSpec, SpecError, TrainSpec, validate_spec_dict
from tests.ray_fixtures import Stack
from trainers.loop import RunContext, TrainingCancelled, train_job
from trainers.reporter import FolderReporter
from trainers.run_local import run_local
from trainers.trackers import (
    RunOutcome,
    TrackedRun,
    TrackingReporter,
    build_trackers,
    end_open_runs,
)

# A cold `mlflow server` takes about 10 s on two cores, and was seen past 90 s while the Ray
# tests beside it kept both cores busy.
SERVER_START_SECONDS = 180
EPOCHS = (1, 2)
RUN_END_SECONDS = 30  # the dispatcher ends a stopped job's MLflow runs in a thread of its own


@dataclass
class MlflowServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the server's whole process group (it runs uvicorn as a child), by its pid."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


def start_mlflow_server(folder: Path, port: int | None = None) -> MlflowServer:
    """A server keeping its runs in `folder`; the same folder and port bring a stopped one back."""
    folder.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
        *("--artifacts-destination", str(folder / "artifacts")),
    ]
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches uvicorn too
        )
    server = MlflowServer(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_healthy(server)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(server: MlflowServer) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"mlflow server not healthy in {SERVER_START_SECONDS} s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def digits_spec(logging: dict[str, Any], name: str = "tracked", **train: Any) -> JobSpec:
    return validate_spec_dict(
        {
            "name": name,
            "model": {
                "type": "pixelcnn",
                "params": {"layers": 1, "channels": 4, "output_hidden": 8},
            },
            "data": {"dataset": "digits"},
            "train": {"epochs": 2, "max_steps_per_epoch": 2, "num_samples": 4, **train},
            "logging": logging,
        }
    )


def metric_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def numeric(line: dict[str, Any]) -> dict[str, float]:
    """What trackers record of a metrics.jsonl line: its numbers, epoch being the step."""
    return {
        key: value for key, value in line.items() if key != "epoch" and type(value) in (int, float)
    }


def rgb_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def mlflow_run(server: MlflowServer, experiment: str) -> Any:
    client = MlflowClient(server.url)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1
    return found[0]


def mlflow_settings(server: MlflowServer, experiment: str) -> dict[str, str]:
    return {"tracking_uri": server.url, "experiment": experiment}


def run_status(server: MlflowServer, run_id: str) -> str:
    return MlflowClient(server.url).get_run(run_id).info.status


# -- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_each_epochs_metrics_and_sample_grid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_local(digits_spec({"tensorboard": True}), out, tmp_path / "data", progress=False)

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    lines = metric_lines(out)
    assert [line["epoch"] for line in lines] == list(EPOCHS)
    for key in ("train_bits_per_dim", "val_bits_per_dim"):
        written = [(event.step, event.value) for event in events.Scalars(key)]
        # Event files hold 32-bit floats.
        assert written == [(line["epoch"], float(np.float32(line[key]))) for line in lines]
    assert set(events.Tags()["scalars"]) == set(numeric(lines[0])) | set(numeric(lines[-1]))
    grids = events.Images("samples")
    assert [grid.step for grid in grids] == list(EPOCHS)
    for grid in grids:
        saved = (out / "samples" / f"samples-epoch{grid.step:03d}.png").read_bytes()
        assert np.array_equal(rgb_pixels(grid.encoded_image_string), rgb_pixels(saved))


def scalar_history(folder: Path, key: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(key)]


def test_tensorboard_files_for_a_storage_uri_are_copied_there_after_every_epoch(
    tmp_path: Path,
) -> None:
    destination = tmp_path / "storage" / "job-1" / "tensorboard"
    run = TrackedRun(tensorboard_dir=destination.as_uri(), job_id="job-1")
    lines: list[str] = []
    trackers = build_trackers(digits_spec({"tensorboard": True}), run, lines.append, True)
    with TrackingReporter(FolderReporter(tmp_path / "out"), trackers) as reporter:
        reporter.metrics({"epoch": 1, "val_bits_per_dim": 2.5})
        # A worker killed now (nothing closes its writer) has left epoch 1 in storage.
        assert scalar_history(destination, "val_bits_per_dim") == [(1, 2.5)]
        reporter.metrics({"epoch": 2, "val_bits_per_dim": 2.25})
        assert scalar_history(destination, "val_bits_per_dim") == [(1, 2.5), (2, 2.25)]
        local_dir = trackers[0].local_dir

    assert scalar_history(destination, "val_bits_per_dim") == [(1, 2.5), (2, 2.25)]
    assert not Path(local_dir).exists()  # the worker's copy goes once storage has it all
    assert lines == [f"tensorboard: event files in {destination.as_uri()}"]


def test_only_rank_zero_tracks(tmp_path: Path) -> None:
    run = TrackedRun(tensorboard_dir=str(tmp_path / "tensorboard"))
    spec = digits_spec({"tensorboard": True})
    assert build_trackers(spec, run, print, is_main=False) == []
    assert not (tmp_path / "tensorboard").exists()


# -- MLflow ----------------------------------------------------------------------------------


def test_mlflow_run_holds_the_spec_each_epochs_metrics_and_sample_pngs(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    out = tmp_path / "out"
    settings = {"tracking_uri": mlflow_server.url, "experiment": "digits-finished"}
    run_local(digits_spec({"mlflow": settings}), out, tmp_path / "data", progress=False)

    run = mlflow_run(mlflow_server, "digits-finished")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    params = run.data.params
    assert (params["model.type"], params["model.params.layers"]) == ("pixelcnn", "1")
    assert (params["model.params.channels"], params["model.params.output_hidden"]) == ("4", "8")
    assert (params["train.epochs"], params["train.max_steps_per_epoch"]) == ("2", "2")
    assert (params["data.dataset"], params["scaling.use_gpu"]) == ("digits", "false")
    assert {f"train.{name}" for name in TrainSpec.model_fields} <= set(params)
    assert "logging.mlflow.tracking_uri" not in params

    client = MlflowClient(mlflow_server.url)
    lines = metric_lines(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        for key, value in numeric(line).items():
            expected.setdefault(key, []).append((line["epoch"], value))
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in expected
    }
    assert history == expected
    assert set(run.data.metrics) == set(expected)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/samples-epoch001.png", "samples/samples-epoch002.png"} <= artifacts
    assert artifacts == {f"samples/{path.name}" for path in (out / "samples").iterdir()}
    info = client.download_artifacts(run.info.run_id, "info.json", str(tmp_path))
    assert json.loads(Path(info).read_text()) == json.loads((out / "info.json").read_text())


def test_a_cancelled_run_ends_its_mlflow_run_killed_with_the_epochs_it_finished(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    settings = {"tracking_uri": mlflow_server.url, "experiment": "digits-cancelled"}
    spec = digits_spec({"mlflow": settings, "tensorboard": True})
    out = tmp_path / "out"
    steps = itertools.count(1)
    context = RunContext(
        data_dir=tmp_path / "data",
        checkpoint_dir=out / "checkpoints",
        should_stop=lambda: next(steps) > 2,  # cancels at epoch 2's first step
    )
    reporter = FolderReporter(out)
    trackers = build_trackers(spec, TrackedRun(str(out / "tensorboard")), reporter.log, True)
    with pytest.raises(TrainingCancelled), TrackingReporter(reporter, trackers) as tracked:
        train_job(spec, tracked, context)

    run = mlflow_run(mlflow_server, "digits-cancelled")
    assert run.info.status == "KILLED"
    client = MlflowClient(mlflow_server.url)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bits_per_dim")] == [1]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val_bits_per_dim")] == [1]


def test_a_restarted_job_continues_its_mlflow_run_and_each_trial_has_its_own(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    settings = {"tracking_uri": mlflow_server.url, "experiment": "sweep-restarts"}
    spec = digits_spec({"mlflow": settings}, name="sweep")
    attempts = [("t1", 1), ("t2", 1), ("t1", 2)]  # t1 restarts from its epoch-1 checkpoint
    for trial, epoch in attempts:
        run = TrackedRun(str(tmp_path / trial), job_id="c0ffee", trial=trial)
        with TrackingReporter(
            FolderReporter(tmp_path / trial), build_trackers(spec, run, print, True)
        ) as reporter:
            reporter.metrics({"epoch": epoch, "val_bits_per_dim": float(epoch)})

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("sweep-restarts").experiment_id
    runs = {r.data.tags["genfleet.trial"]: r for r in client.search_runs([experiment])}
    assert set(runs) == {"t1", "t2"}
    assert {r.data.tags["genfleet.job_id"] for r in runs.values()} == {"c0ffee"}
    assert {r.info.run_name for r in runs.values()} == {"sweep t1", "sweep t2"}
    steps = {
        trial: [m.step for m in client.get_metric_history(r.info.run_id, "val_bits_per_dim")]
        for trial, r in runs.items()
    }
    assert steps == {"t1": [1, 2], "t2": [1]}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "FINISHED"),
        (RuntimeError("data loader broke"), "FAILED"),
        (TrainingCancelled("cancelled at epoch 1, step 3"), "KILLED"),
        (KeyboardInterrupt(), "KILLED"),
    ],
)
def test_leaving_the_tracking_reporter_ends_the_mlflow_run_as_what_left_it(
    tmp_path: Path, mlflow_server: MlflowServer, error: BaseException | None, status: str
) -> None:
    experiment = f"outcome-{status}-{type(error).__name__}"
    spec = digits_spec({"mlflow": mlflow_settings(mlflow_server, experiment)})
    run = TrackedRun(str(tmp_path / "tensorboard"))
    trackers = build_trackers(spec, run, print, True)
    expectation = pytest.raises(type(error)) if error else nullcontext()
    with expectation, TrackingReporter(FolderReporter(tmp_path / "out"), trackers) as reporter:
        reporter.metrics({"epoch": 1, "val_bits_per_dim": 2.5})
        if error is not None:
            raise error
    assert mlflow_run(mlflow_server, experiment).info.status == status


def test_an_older_attempt_neither_ends_nor_reopens_the_run_a_newer_attempt_holds(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    spec = digits_spec({"mlflow": mlflow_settings(mlflow_server, "two-attempts")})

    def attempt(number: int) -> TrackingReporter:
        run = TrackedRun(str(tmp_path / f"tb{number}"), job_id="a77e", attempt=number)
        return TrackingReporter(
            FolderReporter(tmp_path / "out"), build_trackers(spec, run, print, True)
        )

    first = attempt(1)  # its dispatcher lost the lease, and the job was claimed again:
    second = attempt(2)
    run_id = mlflow_run(mlflow_server, "two-attempts").info.run_id
    first.metrics({"epoch": 1, "val_bits_per_dim": 3.0})
    second.metrics({"epoch": 1, "val_bits_per_dim": 2.0})
    first.close(RunOutcome.FAILED)  # its worker died as its copy was stopped
    assert run_status(mlflow_server, run_id) == "RUNNING"
    late = attempt(1)  # Ray Train restarted the old copy's worker before its stop arrived
    late.close(RunOutcome.KILLED)
    assert run_status(mlflow_server, run_id) == "RUNNING"
    second.close(RunOutcome.FINISHED)

    run = mlflow_run(mlflow_server, "two-attempts")  # still one run
    assert (run.info.status, run.data.tags["genfleet.attempt"]) == ("FINISHED", "2")
    history = MlflowClient(mlflow_server.url).get_metric_history(run_id, "val_bits_per_dim")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (1, 3.0)]


def test_end_open_runs_ends_the_jobs_running_runs_up_to_its_attempt(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    spec = digits_spec({"mlflow": mlflow_settings(mlflow_server, "open-runs")}, name="sweep")
    opened = {}
    for job_id, trial, attempt in [
        ("b0b", "t1", 1),
        ("b0b", "t2", 1),
        ("b0b", "t3", 2),
        ("d0d", None, 1),
    ]:
        run = TrackedRun(str(tmp_path / f"{job_id}{trial}"), job_id, trial, attempt)
        opened[job_id, trial] = TrackingReporter(
            FolderReporter(tmp_path / "out"), build_trackers(spec, run, print, True)
        )
    opened["b0b", "t2"].close(RunOutcome.FINISHED)  # a trial that had ended on its own
    lines: list[str] = []

    ended = end_open_runs(spec, "b0b", 1, RunOutcome.KILLED, lines.append)

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("open-runs").experiment_id
    runs = client.search_runs([experiment])
    status = {
        (r.data.tags["genfleet.job_id"], r.data.tags.get("genfleet.trial")): r.info.status
        for r in runs
    }
    assert status == {
        ("b0b", "t1"): "KILLED",
        ("b0b", "t2"): "FINISHED",
        ("b0b", "t3"): "RUNNING",  # a newer attempt's: not this one's to end
        ("d0d", None): "RUNNING",  # another job's
    }
    killed = [r.info.run_id for r in runs if r.info.status == "KILLED"]
    assert (ended, lines) == (killed, [])


def test_end_open_runs_never_raises_and_logs_one_line_when_the_server_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = digits_spec({"mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}})
    lines: list[str] = []
    started = time.monotonic()
    assert end_open_runs(spec, "c4c", 1, RunOutcome.FAILED, lines.append) == []
    assert time.monotonic() - started < 30  # MLFLOW_HTTP_LIMITS: seconds, not minutes
    assert len(lines) == 1
    assert lines[0].startswith("warning: mlflow: could not end the job's open runs as FAILED: ")

    monkeypatch.setitem(sys.modules, "mlflow", None)  # a dispatcher without the extra
    assert end_open_runs(spec, "c4c", 1, RunOutcome.FAILED, lines.append) == []
    assert len(lines) == 1


def test_a_tracker_whose_params_the_server_refuses_ends_the_run_it_opened(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    settings = mlflow_settings(mlflow_server, "refused-params")
    run = TrackedRun(str(tmp_path / "tensorboard"), job_id="e1e", attempt=1)
    with TrackingReporter(
        FolderReporter(tmp_path / "out"),
        build_trackers(digits_spec({"mlflow": settings}), run, print, True),
    ):
        pass
    # MLflow refuses to change a logged param: the same job with another lr fails at params,
    # after it reopened the run.
    changed = digits_spec({"mlflow": settings}, lr=0.5)
    lines: list[str] = []
    assert (
        build_trackers(
            changed, TrackedRun(str(tmp_path / "tb2"), "e1e", None, 2), lines.append, True
        )
        == []
    )
    assert len(lines) == 1
    assert lines[0].startswith(
        "warning: mlflow tracking stopped, the run goes on without it: start failed"
    )
    assert mlflow_run(mlflow_server, "refused-params").info.status == "FAILED"


def test_a_tracker_that_stopped_sending_still_ends_its_mlflow_run_at_close(
    tmp_path: Path,
) -> None:
    server = start_mlflow_server(tmp_path / "mlflow")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        spec = digits_spec({"mlflow": mlflow_settings(server, "blip")})
        reporter = FolderReporter(tmp_path / "out")
        trackers = build_trackers(spec, TrackedRun(str(tmp_path / "tb")), reporter.log, True)
        with TrackingReporter(reporter, trackers) as tracked:
            tracked.metrics({"epoch": 1, "val_bits_per_dim": 3.0})
            server.stop(signal.SIGKILL)
            tracked.metrics({"epoch": 2, "val_bits_per_dim": 2.0})  # fails: sends nothing more
            server = start_mlflow_server(tmp_path / "mlflow", port)  # the same store, back
            tracked.metrics({"epoch": 3, "val_bits_per_dim": 1.0})
        run = mlflow_run(server, "blip")
        history = MlflowClient(server.url).get_metric_history(run.info.run_id, "val_bits_per_dim")
    finally:
        server.stop(signal.SIGKILL)

    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in history] == [(1, 3.0)]
    warnings = [
        line
        for line in (tmp_path / "out" / "log.txt").read_text().splitlines()
        if "warning" in line
    ]
    assert len(warnings) == 1 and "metrics failed" in warnings[0]


class StopsServerAfterFirstEpoch(FolderReporter):
    """A run's own reporter that kills the MLflow server once epoch 1's metrics are in."""

    def __init__(self, out_dir: Path, server: MlflowServer) -> None:
        super().__init__(out_dir)
        self.server = server

    def metrics(self, metrics: dict[str, Any]) -> None:
        super().metrics(metrics)
        if metrics["epoch"] == 1:
            self.server.stop(signal.SIGKILL)


def test_an_mlflow_server_lost_mid_run_costs_one_warning_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    server = start_mlflow_server(tmp_path / "mlflow")
    try:
        out = tmp_path / "out"
        settings = {"tracking_uri": server.url, "experiment": "digits-lost-server"}
        spec = digits_spec({"mlflow": settings, "tensorboard": True})
        reporter = StopsServerAfterFirstEpoch(out, server)
        run = TrackedRun(tensorboard_dir=str(out / "tensorboard"))
        context = RunContext(data_dir=tmp_path / "data", checkpoint_dir=out / "checkpoints")
        started = time.monotonic()
        with TrackingReporter(reporter, build_trackers(spec, run, reporter.log, True)) as tracked:
            final = train_job(spec, tracked, context)
        elapsed = time.monotonic() - started
    finally:
        server.stop(signal.SIGKILL)

    assert final["epoch"] == 2
    assert [line["epoch"] for line in metric_lines(out)] == list(EPOCHS)
    assert (out / "samples" / "samples-epoch002.png").is_file()
    warnings = [line for line in (out / "log.txt").read_text().splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "mlflow tracking stopped, the run goes on without it: metrics failed" in warnings[0]
    assert elapsed < 30  # bounded retries, not MLflow's default four minutes
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val_bits_per_dim")] == list(EPOCHS)


# -- cluster jobs: a real dispatcher on a local Ray cluster ----------------------------------


def submit_tracked(stack: Stack, server: MlflowServer, experiment: str, **train: Any) -> str:
    logging = {"tensorboard": True, "mlflow": mlflow_settings(server, experiment)}
    return stack.queue.submit(digits_spec(logging, name="ray-tracked", **train))


def job_runs(server: MlflowServer, experiment: str, job_id: str) -> list[Any]:
    """The job's MLflow runs, once none is RUNNING any more (or RUN_END_SECONDS passed)."""
    client = MlflowClient(server.url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    deadline = time.monotonic() + RUN_END_SECONDS
    while True:
        runs = client.search_runs([found.experiment_id], f"tags.`genfleet.job_id` = '{job_id}'")
        if time.monotonic() > deadline or all(r.info.status != "RUNNING" for r in runs):
            return runs
        time.sleep(0.25)


@pytest.mark.ray
def test_a_cluster_job_writes_event_files_to_storage_and_finishes_its_mlflow_run(
    stack: Stack, dispatcher: Any, mlflow_server: MlflowServer
) -> None:
    job_id = submit_tracked(stack, mlflow_server, "ray-finished")
    record = stack.wait_final(job_id)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    stored = stack.store.metrics(job_id)
    assert [row["epoch"] for row in stored] == list(EPOCHS)

    # Event files hold 32-bit floats.
    expected = [(row["epoch"], float(np.float32(row["val_bits_per_dim"]))) for row in stored]
    tensorboard = Path(stack.settings.storage) / job_id / "tensorboard"
    assert scalar_history(tensorboard, "val_bits_per_dim") == expected
    (run,) = job_runs(mlflow_server, "ray-finished", job_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["genfleet.attempt"], run.data.tags.get("genfleet.trial")) == ("1", None)
    client = MlflowClient(mlflow_server.url)
    history = client.get_metric_history(run.info.run_id, "val_bits_per_dim")
    assert [(m.step, m.value) for m in history] == [
        (row["epoch"], row["val_bits_per_dim"]) for row in stored
    ]


@pytest.mark.ray
def test_a_cancelled_cluster_job_ends_its_mlflow_run_killed(
    stack: Stack, dispatcher: Any, mlflow_server: MlflowServer
) -> None:
    job_id = submit_tracked(stack, mlflow_server, "ray-cancelled", epochs=20)
    stack.wait_for(job_id, lambda record: bool(stack.store.metrics(job_id)), timeout=120)
    stack.queue.cancel(job_id)
    assert stack.wait_final(job_id, timeout=60).status == JobStatus.CANCELLED

    # The cancel kills the workers: no tracker closed the run, the dispatcher ended it.
    (run,) = job_runs(mlflow_server, "ray-cancelled", job_id)
    assert run.info.status == "KILLED"
    client = MlflowClient(mlflow_server.url)
    assert client.get_metric_history(run.info.run_id, "val_bits_per_dim")[0].step == 1
    assert not [line for line in stack.store.logs(job_id, tail=500) if "warning" in line]


# -- the spec's logging section --------------------------------------------------------------


@pytest.mark.parametrize(
    ("logging", "package"),
    [
        ({"tensorboard": True}, "tensorboard"),
        ({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}, "mlflow"),
    ],
)
def test_a_spec_asking_for_a_tracker_that_is_not_installed_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, logging: dict[str, Any], package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # hides the package from find_spec
    with pytest.raises(SpecError) as refused:
        digits_spec(logging)
    assert str(refused.value) == (
        f"logging.{package}: needs the {package} package; pip install 'genfleet[{package}]'"
    )


@pytest.mark.parametrize(
    "uri", ["http://127.0.0.1:5000", "https://mlflow.example.org/", "http://mlflow:5000/base"]
)  # fmt: skip
def test_mlflow_tracking_uri_is_a_tracking_servers_url(uri: str) -> None:
    spec = digits_spec({"mlflow": {"tracking_uri": uri}})
    assert spec.logging.mlflow is not None
    assert (spec.logging.mlflow.tracking_uri, spec.logging.mlflow.experiment) == (uri, "genfleet")


@pytest.mark.parametrize(
    ("mlflow", "message"),
    [
        ({"tracking_uri": "sqlite:///mlflow.db"}, "must be an MLflow server's http(s)://host:port URL, got 'sqlite:///mlflow.db'"),
        ({"tracking_uri": "file:/srv/mlruns"}, "must be an MLflow server's http(s)://host:port URL"),
        ({"tracking_uri": "/srv/mlruns"}, "must be an MLflow server's http(s)://host:port URL"),
        ({"tracking_uri": "databricks"}, "must be an MLflow server's http(s)://host:port URL"),
        ({"tracking_uri": "localhost:5000"}, "must be an MLflow server's http(s)://host:port URL"),
        ({"tracking_uri": "http:///no-host"}, "needs a host"),
        ({"tracking_uri": "https://user:secret@mlflow.example.org"}, "must not hold credentials"),
        ({"tracking_uri": "http://host\n"}, "must not hold control characters"),
        ({"tracking_uri": ""}, "at least 1 character"),
        ({"tracking_uri": "http://h:1", "experiment": ""}, "at least 1 character"),
        ({"tracking_uri": "http://h:1", "experiment": "x" * 201}, "at most 200 characters"),
        ({"experiment": "e"}, "tracking_uri"),
    ],
)  # fmt: skip
def test_mlflow_settings_are_refused_naming_the_field(mlflow: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as refused:
        digits_spec({"mlflow": mlflow})
    text = str(refused.value)
    assert text.startswith("logging.mlflow.")
    assert message in text
