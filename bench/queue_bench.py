"""Queue throughput and claim latency: genfleet's JobQueue beside rq, on one redis-server.

    .venv/bin/python bench/queue_bench.py              # 10,000 jobs each
    .venv/bin/python bench/queue_bench.py --jobs 1000  # a quick run

Starts its own redis-server on a free port through `ensure_embedded` in a temporary home, so
with the embedded server's settings (password, appendonly, appendfsync everysec), and stops it
at the end. Each system runs in this one process, one client, on the same server:

- genfleet: `submit` N jobs, then N times `claim` + `complete` (each one Lua script).
- rq: `Queue.enqueue` N jobs of `os.getpid` (next to no work), then N times a SimpleWorker's
  `dequeue_job_and_maintain_ttl` + `execute_job` (prepare, run it in-process, and the
  success path that finishes the job and writes its result): rq's own worker loop per
  job, without the fork.

Claim latency is the time of one `claim` / one `dequeue_job_and_maintain_ttl`. End-to-end
jobs/s is N over the time of both phases. Prints markdown tables; every figure is from this run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import rq

from jobs.queue import JobQueue
from jobs.redis_server import ensure_embedded, stop_embedded
from jobs.spec import JobSpec
from jobs.store import JobStore

SPEC = JobSpec.model_validate({"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}})
WORKER = "bench-worker"


@dataclass(frozen=True)
class Run:
    system: str
    jobs: int
    submit_seconds: float
    process_seconds: float
    claim_latencies: list[float]

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / (self.submit_seconds + self.process_seconds)

    def row(self) -> str:
        p50, p99 = percentile(self.claim_latencies, 50), percentile(self.claim_latencies, 99)
        return (
            f"| {self.system} | {self.jobs / self.submit_seconds:,.0f} "
            f"| {self.jobs / self.process_seconds:,.0f} | {self.jobs_per_second:,.0f} "
            f"| {p50 * 1e3:.3f} | {p99 * 1e3:.3f} |"
        )


def percentile(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def timed(action: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    outcome = action()
    return time.perf_counter() - start, outcome


def run_genfleet(client: redis.Redis, jobs: int) -> Run:
    queue = JobQueue(client, prefix="bench")
    start = time.perf_counter()
    for _ in range(jobs):
        queue.submit(SPEC)
    submit_seconds = time.perf_counter() - start

    latencies = []
    start = time.perf_counter()
    for _ in range(jobs):
        latency, claimed = timed(lambda: queue.claim(WORKER, lease_seconds=60))
        latencies.append(latency)
        queue.complete(claimed.lease, {})
    return Run("genfleet", jobs, submit_seconds, time.perf_counter() - start, latencies)


def run_rq(client: redis.Redis, jobs: int) -> Run:
    queue = rq.Queue("bench", connection=client)
    start = time.perf_counter()
    for _ in range(jobs):
        queue.enqueue(os.getpid)  # next to no work, and importable (rq refuses __main__)
    submit_seconds = time.perf_counter() - start

    worker = rq.SimpleWorker([queue], connection=client)
    worker.register_birth()
    latencies = []
    start = time.perf_counter()
    for _ in range(jobs):
        latency, (job, job_queue) = timed(lambda: worker.dequeue_job_and_maintain_ttl(None))
        latencies.append(latency)
        worker.execute_job(job, job_queue)
    process_seconds = time.perf_counter() - start
    worker.register_death()
    finished = queue.finished_job_registry.count
    assert finished == jobs, f"rq finished {finished} of {jobs} jobs"
    return Run("rq", jobs, submit_seconds, process_seconds, latencies)


def listing_milliseconds(client: redis.Redis, jobs: int) -> dict[str, float]:
    """Median time of one 50-row page of the store's listing, over the jobs just run."""
    store = JobStore(client, prefix="bench")
    pages = {
        "all jobs, first page": lambda: store.list_jobs(limit=50),
        "status + model, first page": lambda: store.list_jobs(
            status="succeeded", model="pixelcnn", limit=50
        ),
        "status + model + kind, middle page": lambda: store.list_jobs(
            status="succeeded", model="pixelcnn", kind="train", offset=jobs // 2, limit=50
        ),
    }
    return {
        name: statistics.median(timed(page)[0] for _ in range(21)) * 1e3
        for name, page in pages.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        client = redis.Redis.from_url(ensure_embedded(Path(home)))
        try:
            version = client.info("server")["redis_version"]
            client.flushdb()
            rq_run = run_rq(client, args.jobs)
            client.flushdb()
            genfleet_run = run_genfleet(client, args.jobs)
            listing = listing_milliseconds(client, args.jobs)
        finally:
            stop_embedded(Path(home))

    print(f"{args.jobs:,} jobs each, redis-server {version}, Python {sys.version.split()[0]}")
    print()
    print("| system | submit jobs/s | claim+complete jobs/s | end-to-end jobs/s "
          "| claim p50 ms | claim p99 ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    print(genfleet_run.row())
    print(rq_run.row())
    ratio = genfleet_run.jobs_per_second / rq_run.jobs_per_second
    print()
    print(f"genfleet / rq end-to-end: {ratio:.2f}x")
    print()
    print(f"| store listing at {args.jobs:,} jobs (50 rows) | median ms |")
    print("|---|---:|")
    for name, milliseconds in listing.items():
        print(f"| {name} | {milliseconds:.2f} |")


if __name__ == "__main__":
    main()
