"""Redis bytes per finished 100-epoch job, images in Redis (before) and in storage (after), and
the Job page gallery's load time in headless Chromium for each.

    .venv/bin/python bench/footprint_bench.py                       # 100 epochs, 5 rounds
    .venv/bin/python bench/footprint_bench.py --quick               # a smoke run
    .venv/bin/python bench/footprint_bench.py --quick --bytes-only  # tests/test_footprint_bench.py

Starts a redis-server on a free port in a temporary folder, as the tests do (RedisProcess: the
system's redis-server, whose Lua takes the queue's `#!lua flags=` scripts), with the runs'
storage beside it. Each job is a pixelcnn job of one shape (digits, MNIST,
CIFAR-10) that goes through the real `submit`, `claim` and `complete`, and between them sends
what a run sends, one batch per epoch (the dispatcher stores a run's relay every tick):

- once, the dispatcher's "starting" log line and the run info event;
- per epoch, as trainers/loop.py's `sample` sends them at the spec defaults (`sample_every` 1,
  `num_samples` 64): a "samples" grid of 64 and a "completions" grid of 8 val images above 8
  completions, pixelcnn's one `visuals` grid, both through the loop's `levels_to_png` from
  uniformly random levels (early samples are noise: the least compressible grids, which give
  the issue's 28.4 MiB); the metrics row (train and val terms, test after the last epoch); the
  checkpoint (`checkpoint_every` 1); and one log line with the row, as `genfleet run-local`
  echoes it (a Ray run logs less), so that logs are not understated.

After: `JobStore.write_for_run`. Before: the same batches written as write_run.lua did before
images moved to the runs' storage (`write_as_before`). A job's bytes are the sum of
`MEMORY USAGE key SAMPLES 0` over its keys (both layouts count the footprint hash that the
queue's events now keep, a few dozen bytes), beside the `used_memory` growth while it was
written. The gallery: rounds+1 before/after pairs of CIFAR-shaped jobs under one prefix; the
first pair warms up the dashboard; each round opens its pair in alternating order, twice: the
first open reads through the dashboard's empty caches, the second hits them. Prints markdown
tables of medians; every figure is from this run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import torch
from playwright.sync_api import Browser, sync_playwright
from redis import Redis

sys.path.insert(0, str(Path(__file__).parents[1]))  # `tests.*`, run from anywhere

from dashboard.images import STRIP_LENGTH
from dashboard.launch import launch_dashboard, stop_dashboard
from jobs.keys import LOG_LINES_KEPT, Keys
from jobs.messages import Checkpoint, Image, Log, Message, Metrics, RunInfo
from jobs.queue import JobQueue
from jobs.records import JobStatus, Lease
from jobs.run_storage import RunStorage
from jobs.spec import JobSpec
from jobs.store import JobStore, _run_write
from tests.redis_fixtures import RedisProcess, free_port
from tests.test_dashboard_browser import ALL_IMAGES_LOADED, CHROMIUM, CHROMIUM_ARGS
from trainers.checkpoint import checkpoint_folder
from trainers.data import DATASET_LEVELS
from trainers.images import levels_to_png
from trainers.loop import VISUAL_IMAGES
from trainers.metrics import with_bits_per_dim
from trainers.reporter import format_metrics

PREFIX = "footprint"
WORKER = "bench-dispatcher"
EPOCHS, QUICK_EPOCHS = 100, 10
ROUNDS, QUICK_ROUNDS = 5, 2
STEPS_PER_EPOCH = 703  # CIFAR-10's 45,000 train images in batches of 64
GOAL_BYTES = 2**20  # the goal for the CIFAR-shaped job
GALLERY_TIMEOUT_MS = 120_000  # a bound, on a loaded 2-core machine, not a measurement
MIB = 2**20
Grids = list[list[tuple[str, bytes]]]  # per epoch, the (name, PNG) pairs a run sends


class Layout(StrEnum):
    BEFORE = "before"  # PNGs in Redis, lists uncapped but for 5,000 log lines
    AFTER = "after"  # PNGs in the runs' storage, an index entry in Redis, lists capped by bytes


@dataclass(frozen=True)
class Shape:
    label: str
    dataset: str
    channels: int
    side: int

    @property
    def levels(self) -> int:
        return DATASET_LEVELS.get(self.dataset, 256)

    @property
    def dims(self) -> int:
        return self.channels * self.side**2

    def spec(self, epochs: int) -> JobSpec:
        return JobSpec.model_validate(
            {
                "name": f"footprint-{self.dataset}",
                "model": {"type": "pixelcnn"},
                "data": {"dataset": self.dataset},
                "train": {"epochs": epochs},
            }
        )


SHAPES = (
    Shape("digits 8x8x1", "digits", 1, 8),
    Shape("MNIST 28x28x1", "mnist", 1, 28),
    Shape("CIFAR 32x32x3", "cifar10", 3, 32),
)


@cache  # the CIFAR grids serve both tables
def sample_grids(shape: Shape, epochs: int) -> Grids:
    """What the loop's `sample` sends each epoch for pixelcnn, from random levels."""
    spec = shape.spec(epochs)
    generator = torch.Generator().manual_seed(0)
    size = (shape.channels, shape.side, shape.side)

    def levels(count: int) -> torch.Tensor:
        return torch.randint(0, shape.levels, (count, *size), generator=generator)  # (N, C, H, W)

    return [
        [
            ("samples", levels_to_png(levels(spec.train.num_samples), shape.levels)),
            # 8 val images above their 8 completions (trainers/sampling.py's `visuals`)
            ("completions", levels_to_png(levels(2 * VISUAL_IMAGES), shape.levels, VISUAL_IMAGES)),
        ]
        for _ in range(spec.train.epochs)
    ]


def metrics_row(epoch: int, epochs: int, dims: int) -> dict[str, Any]:
    """The loop's row for a pixelcnn epoch: val every epoch (`eval_every` 1), test at the end."""
    nats = dims * math.log(2) * (1.0 + 3.0 / epoch)  # bits/dim falling towards 1
    row: dict[str, Any] = {"epoch": epoch, "step": epoch * STEPS_PER_EPOCH, "lr": 0.001}
    row["images_per_s"] = 1000 + 1000 / (epoch + 6)  # a float of full precision, as measured
    for split in ("train", "val", "test") if epoch == epochs else ("train", "val"):
        terms = {f"{split}_loss": nats / dims, f"{split}_nll_nats": nats}
        row |= with_bits_per_dim(terms, f"{split}_", dims)
    return row


def run_messages(shape: Shape, grids: Grids, job_id: str, storage: Path) -> list[list[Message]]:
    """A finished run's messages for `job_id`, one batch per epoch after a first one."""
    # Some of TrainingRun.run_info's keys: one event of a few hundred bytes either way.
    info = {"model": "pixelcnn", "objective": "exact_likelihood", "likelihood": "exact"}
    info |= {"dataset": shape.dataset, "levels": shape.levels, "dims": shape.dims}
    info |= {"steps_per_epoch": STEPS_PER_EPOCH, "world_size": 1, "ema": 0.0}
    start = f"[dispatcher {WORKER}] attempt 1: starting"
    batches: list[list[Message]] = [[Log(start), RunInfo(info)]]
    claim_folder = storage / job_id / "claim-1"  # cluster/train_run.py's run folder, claim 1
    for epoch, pngs in enumerate(grids, start=1):
        row = metrics_row(epoch, len(grids), shape.dims)
        images: list[Message] = [Image(name, epoch, png) for name, png in pngs]
        checkpoint = Checkpoint(epoch, str(checkpoint_folder(claim_folder, epoch)))
        batches.append([*images, Metrics(row), checkpoint, Log(format_metrics(row))])
    return batches


def write_as_before(client: Redis, keys: Keys, lease: Lease, messages: list[Message]) -> None:
    """A batch as write_run.lua stored it before images moved out of Redis: the PNG itself in
    the images hash, metrics and events uncapped, logs capped at LOG_LINES_KEPT lines only.

    `_run_write` turned messages into the same (kind, trial, value, extra) groups then. No
    lease check: the bench's lease always holds.
    """
    job_id, job = lease.job_id, keys.job(lease.job_id)
    progress = json.loads(client.hget(job, "progress") or b"{}")
    pipe = client.pipeline()  # MULTI/EXEC: all of a batch or none, as the script was
    for write in filter(None, map(_run_write, messages)):
        match write:  # a train job's writes have no trial
            case ("metrics", _, row, _):
                progress.update(json.loads(row))
                pipe.hset(job, "progress", compact_json(progress))
                pipe.rpush(keys.metrics(job_id), row)
            case ("image", _, field, png):
                pipe.hset(keys.images(job_id), field, png)
            case ("log", _, line, _):
                pipe.rpush(keys.logs(job_id), line)
                pipe.ltrim(keys.logs(job_id), -LOG_LINES_KEPT, -1)
                pipe.incr(keys.log_count(job_id))
            case ("checkpoint", _, entry, _):
                pipe.rpush(keys.checkpoints(job_id), entry)
            case ("event", _, text, _):
                event = {"ts": time.time(), "status": "running", "message": text}
                pipe.rpush(keys.events(job_id), compact_json({**event, "dispatcher": lease.owner}))
    pipe.execute()


def compact_json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))  # as Lua's cjson.encode spells it


@dataclass(frozen=True)
class Footprint:
    key_bytes: int  # MEMORY USAGE summed over the job's keys
    used_memory: int  # INFO used_memory growth while the job was written
    storage_bytes: int  # the job's files in the runs' storage


class Fleet:
    """Writes finished jobs under PREFIX, through the real queue, in either layout."""

    def __init__(self, client: Redis, storage: Path) -> None:
        self.client, self.storage = client, storage
        self.queue = JobQueue(client, PREFIX)
        self.store = JobStore(client, PREFIX, RunStorage(str(storage)))
        self.keys = Keys(PREFIX)

    def write(self, layout: Layout, lease: Lease, batch: list[Message]) -> None:
        if layout is Layout.BEFORE:
            write_as_before(self.client, self.keys, lease, batch)
        else:
            self.store.write_for_run(lease, batch)

    def finished_job(self, layout: Layout, shape: Shape, grids: Grids) -> str:
        job_id = self.queue.submit(shape.spec(len(grids)))
        claimed = self.queue.claim(WORKER, lease_seconds=3600)
        assert claimed is not None and claimed.job_id == job_id, "another job was queued"
        for batch in run_messages(shape, grids, job_id, self.storage):
            self.write(layout, claimed.lease, batch)
        assert self.queue.complete(claimed.lease, {"val_bits_per_dim": 1.0}) is JobStatus.SUCCEEDED
        return job_id

    def measured(self, layout: Layout, shape: Shape, grids: Grids) -> Footprint:
        used = self.client.info("memory")["used_memory"]
        job_id = self.finished_job(layout, shape, grids)
        grown = self.client.info("memory")["used_memory"] - used
        keys = self.client.scan_iter(match=f"{PREFIX}:*{job_id}*", count=1000)
        key_bytes = sum(self.client.memory_usage(key, samples=0) or 0 for key in keys)
        files = (path for path in (self.storage / job_id).rglob("*") if path.is_file())
        return Footprint(key_bytes, grown, sum(path.stat().st_size for path in files))


def footprint_table(fleet: Fleet, epochs: int) -> str:
    # Unmeasured first: the first job loads the Lua scripts and creates the shared indexes.
    warm_up = sample_grids(SHAPES[0], 1)
    for layout in Layout:
        fleet.finished_job(layout, SHAPES[0], warm_up)
    lines = [
        f"Redis bytes per finished {epochs}-epoch pixelcnn job (MEMORY USAGE over its keys)\n",
        "| shape | before MiB | after MiB | after / before | files in storage (MiB) "
        "| used_memory growth before / after (MiB) | after <= 1 MiB |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for shape in SHAPES:
        grids = sample_grids(shape, epochs)
        before, after = (fleet.measured(layout, shape, grids) for layout in Layout)
        lines.append(
            f"| {shape.label} | {before.key_bytes / MIB:.3f} | {after.key_bytes / MIB:.3f} "
            f"| {after.key_bytes / before.key_bytes:.4f} | {after.storage_bytes / MIB:.2f} "
            f"| {before.used_memory / MIB:.2f} / {after.used_memory / MIB:.2f} "
            f"| {'yes' if after.key_bytes <= GOAL_BYTES else 'NO'} |"
        )
    return "\n".join(lines)


@contextmanager
def served_dashboard(home: Path, redis_url: str, storage: Path) -> Iterator[str]:
    port = free_port()
    env = {"GENFLEET_HOME": str(home), "GENFLEET_REDIS_URL": redis_url, "GENFLEET_PREFIX": PREFIX}
    env["GENFLEET_STORAGE"] = str(storage)
    process = launch_dashboard("127.0.0.1", port, None, env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not answers(f"{base}/_stcore/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start (exit {process.poll()})")
            time.sleep(0.2)
        yield base
    finally:
        stop_dashboard(process)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def open_ms(browser: Browser, url: str, images: int) -> float:
    """From navigation to every image of the open gallery tab decoded, in a fresh context (an
    empty browser cache)."""
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    try:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function(ALL_IMAGES_LOADED, arg=images, timeout=GALLERY_TIMEOUT_MS)
        return (time.perf_counter() - start) * 1000
    finally:
        context.close()


def gallery_rounds(
    browser: Browser, base: str, pairs: list[dict[Layout, str]], images: int
) -> dict[tuple[str, Layout], list[float]]:
    """Each pair's pages in alternating order, first through the dashboard's empty caches,
    then again with them full."""
    times: dict[tuple[str, Layout], list[float]] = defaultdict(list)
    for round_index, pair in enumerate(pairs):
        order = list(Layout) if round_index % 2 == 0 else list(reversed(Layout))
        for visit in ("first open", "second open"):
            for layout in order:
                url = f"{base}/job?job={pair[layout]}"
                times[(visit, layout)].append(open_ms(browser, url, images))
    return times


def gallery_table(fleet: Fleet, base: str, epochs: int, rounds: int) -> str:
    shape = SHAPES[-1]
    grids = sample_grids(shape, epochs)
    pairs = [
        {layout: fleet.finished_job(layout, shape, grids) for layout in Layout}
        for _ in range(rounds + 1)
    ]
    images = 1 + min(epochs, STRIP_LENGTH)  # the chosen epoch's grid, then the strip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        gallery_rounds(browser, base, pairs[:1], images)  # warm-up: the app's first runs
        times = gallery_rounds(browser, base, pairs[1:], images)
        browser.close()
    lines = [
        f"Job page of a {epochs}-epoch {shape.label} job until its {images} gallery images "
        f"are decoded, median of {rounds} rounds in headless Chromium, in ms\n",
        "| open | before ms | after ms | after / before | each round's after / before |",
        "|---|---:|---:|---:|---|",
    ]
    for visit in ("first open", "second open"):
        before, after = (times[(visit, layout)] for layout in Layout)
        ratio = statistics.median(after) / statistics.median(before)
        each = (late / early for early, late in zip(before, after, strict=True))
        rounds_text = ", ".join(f"{round_ratio:.2f}" for round_ratio in each)
        lines.append(
            f"| {visit} | {statistics.median(before):.0f} | {statistics.median(after):.0f} "
            f"| {ratio:.2f} | {rounds_text} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and rounds")
    parser.add_argument("--bytes-only", action="store_true", help="skip the browser part")
    args = parser.parse_args()
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        server = RedisProcess(home / "redis")
        server.start()
        try:
            fleet = Fleet(server.client(), home / "storage")
            print(footprint_table(fleet, epochs), flush=True)
            if not args.bytes_only:
                rounds = QUICK_ROUNDS if args.quick else ROUNDS
                with served_dashboard(home, server.url, fleet.storage) as base:
                    print("\n" + gallery_table(fleet, base, epochs, rounds), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
