"""What Ray costs a genfleet run: Ray Train's per-step overhead, and submit-to-first-step latency.

    .venv/bin/python bench/ray_bench.py          # about 6 minutes on 2 CPU cores
    .venv/bin/python bench/ray_bench.py --quick  # about 3 minutes, one timed run in part b

Starts a local Ray as `genfleet up` does (`connect_ray`, dashboard on loopback) and an embedded
Redis in a temporary home, and stops both at the end. Prints markdown; every figure is from
this run. The same spec throughout: PixelCNN with its default params on digits, batch 64.

a. Ray Train overhead. Each round trains the spec through `train_job` twice: bare in this
   process (a plain RunContext and a FolderReporter), then in one Ray Train worker of 1 CPU
   (`build_trainer` and the Train worker function, as a dispatcher runs it). Both use one torch thread
   (Ray gives a 1-CPU worker OMP_NUM_THREADS=1). Seconds per step come from inside the loop:
   each epoch's batch size over its `images_per_s` (full epochs of 25 full batches). The first
   epoch of every run is warm-up and left out. Beside: the run's wall time and the part of it
   outside training steps (start-up, the last epoch's evaluation, and waits between epochs:
   Ray Train's controller collects a worker's report only every
   RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, and the worker's next report waits for it). A third run
   per round uses Ray's default of 2 s instead of genfleet's 0.25 s, to show what that costs.
b. Submit to first step on a warm stack: `JobQueue.submit`, claimed by a Dispatcher (a thread
   here, with `genfleet dispatcher`'s lease and poll defaults) that trains the one-worker spec
   in its warm runner (cluster/warm_runner.py; timed once the pool is full again), then the
   same with no warm runner (a runner process started at the claim), then in a one-worker
   Ray Train run (as before issue 14), beside Ray's Jobs API `submit_job` of `genfleet
   run-local` on the same spec (1 entrypoint CPU).
   The spec trains one epoch of one step, so its first metrics report (the job store's metrics
   for genfleet, metrics.jsonl for run-local) comes after the first step and the same
   epoch-end work (a val pass, 4 samples, a checkpoint). "set up" is the run info the loop
   reports just before its first step (a job event; info.json). One untimed run of each
   system first, then its repeats; the bench polls every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import ray
import redis
import torch
import yaml
from ray.job_submission import JobStatus as RayJobStatus
from ray.job_submission import JobSubmissionClient

from cluster.dispatcher import Dispatcher
from cluster.ray_runtime import connect_ray
from cluster.relay import Relay
from cluster.train_run import REPORT_POLL_SECONDS, REPORT_POLL_VARIABLE, build_trainer
from cluster.warm_runner import WarmPool
from jobs.messages import Message, Metrics
from jobs.queue import JobQueue
from jobs.records import JobStatus
from jobs.redis_server import ensure_embedded, stop_embedded
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.spec import JobSpec, validate_spec_dict
from jobs.store import JobStore
from trainers.loop import RunContext, train_job
from trainers.reporter import FolderReporter

BATCH_SIZE = 64
POLL_SECONDS = 0.05
LATENCY_TIMEOUT_SECONDS = 180.0
BARE = "bare `train_job`"
ON_RAY = f"Ray Train, 1 worker (reports collected every {REPORT_POLL_SECONDS} s)"
ON_RAY_SLOW_POLL = "Ray Train, 1 worker, Ray's default 2 s report collection"
RAY_JOB_FINAL = {RayJobStatus.SUCCEEDED, RayJobStatus.FAILED, RayJobStatus.STOPPED}
WARM = "genfleet: queue, dispatcher, a warm runner"
COLD = "genfleet: the same, no warm runner (GENFLEET_WARM_RUNNERS=0)"
TRAIN = "genfleet: a Ray Train worker group (GENFLEET_DIRECT_RUNS=0)"
RAY_JOBS = "Ray Jobs API: `genfleet run-local`"


@dataclass(frozen=True)
class Plan:
    rounds: int  # part a: bare + Ray Train runs of each
    epochs: int  # per part-a run, the first one left out
    repeats: int  # part b: timed submissions per system


# Ray Train's start-up (some 15 s here) keeps Ray's own processes busy into the first epochs;
# longer runs let the steady state outweigh it.
FULL = Plan(rounds=3, epochs=8, repeats=3)
QUICK = Plan(rounds=1, epochs=6, repeats=1)


def spec_dict(epochs: int, max_steps_per_epoch: int | None) -> dict[str, Any]:
    """PixelCNN defaults on digits; evaluation, samples and checkpoint only after the last epoch."""
    return {
        "name": "ray-bench",
        "model": {"type": "pixelcnn"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "max_steps_per_epoch": max_steps_per_epoch,
            "eval_every": epochs,
            "sample_every": epochs,
            "checkpoint_every": epochs,
            "num_samples": 4,
        },
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0},
    }


# -- a. Ray Train overhead ---------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRun:
    epochs: list[dict[str, Any]]  # the metrics each epoch reported
    wall_seconds: float

    @property
    def steady_step_seconds(self) -> list[float]:
        """Seconds per step of every epoch after the first (all batches are full)."""
        return [BATCH_SIZE / epoch["images_per_s"] for epoch in self.epochs[1:]]

    @property
    def outside_steps_seconds(self) -> float:
        """Wall time not spent in training steps: start-up, evaluation, reports, waits."""
        stepping, previous_step = 0.0, 0
        for epoch in self.epochs:
            stepping += (epoch["step"] - previous_step) * BATCH_SIZE / epoch["images_per_s"]
            previous_step = epoch["step"]
        return self.wall_seconds - stepping


def train_bare(spec: JobSpec, work: Path, data_dir: Path) -> TrainRun:
    out_dir = Path(tempfile.mkdtemp(prefix="bare-", dir=work))
    context = RunContext(data_dir=data_dir, checkpoint_dir=out_dir / "checkpoints")
    started = time.perf_counter()
    train_job(spec, FolderReporter(out_dir), context)
    wall = time.perf_counter() - started
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return TrainRun([json.loads(line) for line in lines], wall)


def train_on_ray(
    spec: JobSpec, work: Path, data_dir: Path, run_name: str, report_poll_s: str
) -> TrainRun:
    # Read by Ray Train in this process when fit() starts its controller.
    os.environ[REPORT_POLL_VARIABLE] = report_poll_s
    relay = Relay.remote()
    loop_config = {
        "relay": relay,
        "data_dir": str(data_dir),
        "job_id": None,  # no queued job, so no attempt: its MLflow run is never reused
        "attempt": None,
        "trial": None,
        "resume_from": None,
    }
    storage = str(work / "ray-storage")
    trainer = build_trainer(
        spec,
        loop_config,
        run_dir=f"{storage}/{run_name}",
        storage_path=storage,
        run_name=run_name,
        keep_checkpoints=2,
    )
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    messages = drain_all(relay)
    ray.kill(relay)
    return TrainRun([message.metrics for message in messages if isinstance(message, Metrics)], wall)


def drain_all(relay: Any) -> list[Message]:
    """Every message the run put into its relay, in order."""
    messages: list[Message] = []
    while batch := ray.get(relay.drain.remote(1000)):
        messages.extend(batch)
    return messages


def train_both_ways(plan: Plan, work: Path, data_dir: Path) -> dict[str, list[TrainRun]]:
    spec = JobSpec.model_validate(spec_dict(plan.epochs, max_steps_per_epoch=None))
    runs: dict[str, list[TrainRun]] = {BARE: [], ON_RAY: [], ON_RAY_SLOW_POLL: []}
    for round_number in range(plan.rounds):  # interleaved, so load from others hits all
        ways: list[tuple[str, Callable[[], TrainRun]]] = [
            (BARE, lambda: train_bare(spec, work, data_dir)),
            *(
                (
                    name,
                    partial(
                        train_on_ray, spec, work, data_dir, f"overhead-{round_number}-{poll}", poll
                    ),
                )
                for name, poll in ((ON_RAY, REPORT_POLL_SECONDS), (ON_RAY_SLOW_POLL, "2"))
            ),
        ]
        # Every other round in reverse, so that no way of running always follows another's
        # teardown.
        for name, train in ways if round_number % 2 == 0 else reversed(ways):
            runs[name].append(train())
    return runs


def overhead_table(runs: dict[str, list[TrainRun]]) -> str:
    lines = [
        "| run | s/step, median | s/step, min - max | epochs timed | run wall s, median "
        "| of it outside steps s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    step_seconds = {}
    for name, name_runs in runs.items():
        steps = [seconds for run in name_runs for seconds in run.steady_step_seconds]
        step_seconds[name] = steps
        wall = statistics.median(run.wall_seconds for run in name_runs)
        outside = statistics.median(run.outside_steps_seconds for run in name_runs)
        lines.append(
            f"| {name} | {statistics.median(steps) * 1e3:.1f} ms | {min(steps) * 1e3:.1f} - "
            f"{max(steps) * 1e3:.1f} ms | {len(steps)} | {wall:.1f} | {outside:.1f} |"
        )
    bare, on_ray = step_seconds[BARE], step_seconds[ON_RAY]
    # The machine's speed drifts by more than the difference sought, so each round's runs,
    # taken back to back, are compared with each other first.
    per_round = [
        statistics.median(ray_run.steady_step_seconds)
        / statistics.median(bare_run.steady_step_seconds)
        for bare_run, ray_run in zip(runs[BARE], runs[ON_RAY], strict=True)
    ]
    # Other work on the machine only ever adds time, so the fastest epochs show the cost
    # intrinsic to each way of running.
    fastest_ratio = min(on_ray) / min(bare)
    lines.append("")
    lines.append(
        f"Ray Train / bare s/step: median of rounds **{statistics.median(per_round):.3f}** "
        f"(goal <= 1.05; rounds {', '.join(f'{ratio:.3f}' for ratio in per_round)}), "
        f"all epochs pooled {statistics.median(on_ray) / statistics.median(bare):.3f}, "
        f"fastest epochs {fastest_ratio:.3f}"
    )
    return "\n".join(lines)


# -- b. submit to first step -------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Seconds from submit until each step of the way."""

    started: float  # claimed by a dispatcher / the Ray job left PENDING
    set_up: float  # the loop's run info, just before its first step
    first_report: float  # the first epoch's metrics, after its single step


def time_markers(
    markers: dict[str, Callable[[], bool]], submitted: float, what: str
) -> dict[str, float]:
    """Seconds from `submitted` until each marker first holds, polled together."""
    seen: dict[str, float] = {}
    while len(seen) < len(markers):
        now = time.monotonic()
        for name, holds in markers.items():
            if name not in seen and holds():
                seen[name] = now - submitted
        if now - submitted > LATENCY_TIMEOUT_SECONDS:
            raise TimeoutError(f"{what}: only {sorted(seen)} after {LATENCY_TIMEOUT_SECONDS} s")
        time.sleep(POLL_SECONDS)
    return seen


def genfleet_latency(queue: JobQueue, store: JobStore, spec: JobSpec, pool: WarmPool) -> Latency:
    """Once the dispatcher's warm runners (if it keeps any) are ready, as on a stack that has
    been up a while."""
    if pool.size and not pool.wait_ready(timeout=LATENCY_TIMEOUT_SECONDS):
        raise TimeoutError("the dispatcher's warm runners did not start")
    submitted = time.monotonic()
    job_id = queue.submit(spec)
    seen = time_markers(
        {
            "started": lambda: store.get(job_id).status != JobStatus.QUEUED,
            "set_up": lambda: any(e.message.startswith("run info") for e in store.events(job_id)),
            "first_report": lambda: bool(store.metrics(job_id)),
            "final": lambda: store.get(job_id).status.is_final,
        },
        submitted,
        f"genfleet job {job_id}",
    )
    record = store.get(job_id)
    if record.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"genfleet job {job_id} {record.status}: {record.last_error}")
    return Latency(seen["started"], seen["set_up"], seen["first_report"])


def ray_job_latency(client: JobSubmissionClient, spec_path: Path, home: Path) -> Latency:
    out_dir = Path(tempfile.mkdtemp(prefix="ray-job-", dir=home))
    entrypoint = (
        f"GENFLEET_HOME={shlex.quote(str(home))} {shlex.quote(sys.executable)} -m cluster.cli "
        f"run-local {shlex.quote(str(spec_path))} --out {shlex.quote(str(out_dir))} --no-progress"
    )
    metrics_file = out_dir / "metrics.jsonl"
    submitted = time.monotonic()
    job_id = client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=1)
    seen = time_markers(
        {
            "started": lambda: client.get_job_status(job_id) != RayJobStatus.PENDING,
            "set_up": (out_dir / "info.json").exists,
            "first_report": lambda: metrics_file.exists() and metrics_file.stat().st_size > 0,
            "final": lambda: client.get_job_status(job_id) in RAY_JOB_FINAL,
        },
        submitted,
        f"Ray job {job_id}",
    )
    status = client.get_job_status(job_id)
    if status != RayJobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {job_id} {status}:\n{client.get_job_logs(job_id)[-3000:]}")
    return Latency(seen["started"], seen["set_up"], seen["first_report"])


def measure_latencies(
    plan: Plan, home: Path, settings: Settings, ray_dashboard: str
) -> dict[str, list[Latency]]:
    spec_data = spec_dict(epochs=1, max_steps_per_epoch=1)
    spec = validate_spec_dict(spec_data)
    spec_path = home / "ray-bench.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    client = JobSubmissionClient(f"http://{ray_dashboard}")
    queue, store = open_queue(settings)
    timed: dict[str, list[Latency]] = {}
    for name, warm_runners, direct_runs in ((WARM, 1, True), (COLD, 0, True), (TRAIN, 1, False)):
        stack = replace(settings, warm_runners=warm_runners, direct_runs=direct_runs)
        with running_dispatcher(queue, store, stack) as pool:
            measure = partial(genfleet_latency, queue, store, spec, pool)
            timed[name] = repeated(measure, plan.repeats)
    timed[RAY_JOBS] = repeated(partial(ray_job_latency, client, spec_path, home), plan.repeats)
    return timed


def repeated(measure: Callable[[], Latency], repeats: int) -> list[Latency]:
    measure()  # untimed: the first run warms caches and Ray's worker pool
    return [measure() for _ in range(repeats)]


@contextmanager
def running_dispatcher(queue: JobQueue, store: JobStore, settings: Settings) -> Iterator[Any]:
    """A dispatcher with `genfleet dispatcher`'s defaults in a thread; yields its warm pool."""
    stop = threading.Event()
    dispatcher = Dispatcher(queue, store, settings)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield dispatcher.pool
    finally:
        stop.set()
        thread.join(timeout=60)


def open_queue(settings: Settings) -> tuple[JobQueue, JobStore]:
    client = redis.Redis.from_url(settings.redis_url or "")
    store = JobStore(client, settings.prefix, RunStorage(settings.storage))
    return JobQueue(client, settings.prefix), store


def latency_table(latencies: dict[str, list[Latency]]) -> str:
    lines = [
        "| system | -> started | -> set up | -> first step reported | first step, min - max "
        "| runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in latencies.items():
        started = statistics.median(run.started for run in runs)
        set_up = statistics.median(run.set_up for run in runs)
        first = [run.first_report for run in runs]
        lines.append(
            f"| {name} | {started:.2f} | {set_up:.2f} | **{statistics.median(first):.2f}** "
            f"| {min(first):.2f} - {max(first):.2f} | {len(runs)} |"
        )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def bench_settings(home: Path, redis_url: str) -> Settings:
    return Settings(
        home=home,
        redis_url=redis_url,
        prefix="ray-bench",
        ray_address=None,
        storage=str(home / "storage"),
        data_dir=home / "data",
        dashboard_address="127.0.0.1",
        dashboard_port=0,
        dashboard_password=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    torch.set_num_threads(1)  # as Ray Train's 1-CPU worker runs
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="genfleet-ray-bench-") as work:
        home = Path(work)
        settings = bench_settings(home, ensure_embedded(home))
        try:
            ray_dashboard = connect_ray(None) or ""
            runs = train_both_ways(plan, home, settings.data_dir)
            latencies = measure_latencies(plan, home, settings, ray_dashboard)
        finally:
            ray.shutdown()
            stop_embedded(home)
    print(
        f"Ray {ray.__version__}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"1-min load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"bench {time.monotonic() - started:.0f} s"
    )
    print()
    print(
        f"a. Ray Train overhead: pixelcnn defaults on digits, batch {BATCH_SIZE}, 1 thread, "
        f"{plan.rounds} round(s) of {plan.epochs} epochs x 25 steps, first epoch of each left out"
    )
    print()
    print(overhead_table(runs))
    print()
    print(
        f"b. Seconds from submit to the first training step on a warm local stack (medians of "
        f"{plan.repeats} timed runs each; 1 epoch of 1 step)"
    )
    print()
    print(latency_table(latencies))


if __name__ == "__main__":
    main()
