"""The queue under load: 8 processes submitting while 4 dispatchers' claim loops drain it.

    .venv/bin/python bench/stress_bench.py              # 10,000 jobs per phase
    .venv/bin/python bench/stress_bench.py --jobs 2000  # a quick run

Starts a redis-server through `ensure_embedded` in a temporary home (the embedded server's
settings: password, appendonly, appendfsync everysec) and stops it at the end. Every client is
its own spawned process, as separate hosts would be. A claim loop is a dispatcher's loop without
Ray: reap expired leases now and then, claim, complete, and ride out Redis errors.

Three phases, each on a fresh key prefix of the same server:
- submit: 8 processes submit N jobs between them; nobody claims.
- claim: 4 claim loops claim and complete those N jobs.
- mixed: 8 processes submit N jobs while 4 claim loops drain them as they arrive.

A phase's rate is its jobs over the time from the first process starting to the last one
finishing. Claim latency is one `claim` call that returned a job. Prints a markdown table.

`tests/test_load.py` runs these same processes for its load and fault tests.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import redis

from jobs.queue import JobQueue
from jobs.records import JobStatus, Lease, LeaseLost
from jobs.redis_server import ensure_embedded, stop_embedded
from jobs.spec import JobSpec
from jobs.store import JobStore

SUBMITTERS = 8
CLAIMERS = 4
SPEC = JobSpec.model_validate({"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}})
REAP_EVERY_SECONDS = 1.0  # how often each claim loop requeues expired leases
RETRY_PAUSE_SECONDS = 0.1  # after a Redis error: it is restarting, or the network is back soon
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as separate hosts would be
# How long the processes get to exit by themselves once a run is left: a clean exit takes
# several seconds on a loaded 2-core machine, and one killed then would fail its exit-code check.
EXIT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Target:
    """Where the load goes: a Redis URL and a key prefix."""

    url: str
    prefix: str

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=False)


@dataclass(frozen=True)
class Submitted:
    job_ids: list[str]
    started: float  # time.monotonic(), one clock for every process on the host
    finished: float


@dataclass(frozen=True)
class Claimed:
    dispatcher_id: str
    job_ids: list[str]  # in claim order; a claim whose reply was lost is not in here
    latencies: list[float]  # seconds, of each claim that returned a job
    redis_errors: int  # ConnectionErrors ridden out
    claimed_after_errors: int  # jobs claimed after the first error
    started: float
    finished: float


def submit_jobs(target: Target, count: int, start: Any, results: Any) -> None:
    """Runs in a spawned process: submit `count` jobs as fast as one client can."""
    queue = JobQueue(target.client(), target.prefix)
    start.wait()
    started = time.monotonic()
    job_ids = [queue.submit(SPEC) for _ in range(count)]
    results.put(Submitted(job_ids, started, time.monotonic()))


def claim_until_drained(
    target: Target,
    dispatcher_id: str,
    lease_seconds: float,
    submitting: Any,
    start: Any,
    results: Any,
) -> None:
    """Runs in a spawned process: claim and complete until no one submits and nothing is
    queued or running. A Redis error costs a pause, never the loop."""
    client = target.client()
    queue, store = JobQueue(client, target.prefix), JobStore(client, target.prefix)
    job_ids: list[str] = []
    latencies: list[float] = []
    errors = claimed_after_errors = 0
    last_reap = 0.0
    start.wait()
    started = time.monotonic()
    while True:
        try:
            if time.monotonic() - last_reap >= REAP_EVERY_SECONDS:
                queue.requeue_expired()
                last_reap = time.monotonic()
            asked = time.monotonic()
            job = queue.claim(dispatcher_id, lease_seconds)
            if job is None:
                if not submitting.is_set() and _drained(store):
                    break
                time.sleep(0.005)
                continue
            latencies.append(time.monotonic() - asked)
            job_ids.append(job.job_id)
            claimed_after_errors += errors > 0
        except redis.ConnectionError:
            errors += 1
            time.sleep(RETRY_PAUSE_SECONDS)
            continue
        errors += _complete_once_answered(queue, job.lease)
    results.put(
        Claimed(
            dispatcher_id,
            job_ids,
            latencies,
            errors,
            claimed_after_errors,
            started,
            time.monotonic(),
        )
    )


def _complete_once_answered(queue: JobQueue, lease: Lease) -> int:
    """Complete the job, retrying through Redis errors; returns the errors ridden out.

    A complete that ran but whose reply was lost raises LeaseLost on the retry (the job is no
    longer running): it succeeded once, which is all that matters. So does a lease the reaper
    took while Redis was away: the loop that claims the job next completes it.
    """
    errors = 0
    while True:
        try:
            queue.complete(lease, {"by": lease.owner})
            return errors
        except LeaseLost:
            return errors
        except redis.ConnectionError:
            errors += 1
            time.sleep(RETRY_PAUSE_SECONDS)


def _drained(store: JobStore) -> bool:
    counts = store.counts_by_status()
    return counts[JobStatus.QUEUED] + counts[JobStatus.RUNNING] == 0


@dataclass(frozen=True)
class Load:
    """What a finished run of submitters and claim loops reported."""

    submitted: list[Submitted]
    claimed: list[Claimed]

    @property
    def submitted_ids(self) -> list[str]:
        return [job_id for part in self.submitted for job_id in part.job_ids]

    @property
    def claimed_ids(self) -> list[str]:
        return [job_id for part in self.claimed for job_id in part.job_ids]


class LoadRun:
    """Submitters and claim loops in spawned processes, started together at a barrier.

    Use it as a context manager: leaving it kills whatever still runs, so a failed test
    leaves no process behind.
    """

    def __init__(
        self,
        target: Target,
        jobs: int,
        submitters: int = SUBMITTERS,
        claimers: int = CLAIMERS,
        lease_seconds: float = 60.0,
    ) -> None:
        self.submitters, self.claimers = submitters, claimers
        self._submitting = SPAWN.Event()
        if submitters:
            self._submitting.set()
        self._submit_results, self._claim_results = SPAWN.Queue(), SPAWN.Queue()
        # Held by the run: a barrier the parent drops may vanish before a child unpickles it.
        self._start = start = SPAWN.Barrier(submitters + claimers)
        shares = [jobs // submitters + (n < jobs % submitters) for n in range(submitters)]
        self.processes = [
            _spawn(submit_jobs, target, share, start, self._submit_results) for share in shares
        ]
        self.processes += [
            _spawn(
                claim_until_drained,
                target,
                f"claimer-{n}",
                lease_seconds,
                self._submitting,
                start,
                self._claim_results,
            )
            for n in range(claimers)
        ]

    def wait(self, timeout: float) -> Load:
        """Every process's report; claim loops finish once the submitters have."""
        deadline = time.monotonic() + timeout
        submitted = [self._next(self._submit_results, deadline) for _ in range(self.submitters)]
        self._submitting.clear()
        claimed = [self._next(self._claim_results, deadline) for _ in range(self.claimers)]
        return Load(submitted, claimed)

    @staticmethod
    def _next(results: Any, deadline: float) -> Any:
        return results.get(timeout=max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def _spawn(target: Any, *args: Any) -> BaseProcess:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


@dataclass(frozen=True)
class Phase:
    name: str
    jobs: int
    submit_seconds: float | None  # first submitter's start to the last one's finish
    claim_seconds: float | None
    latencies: list[float]

    def row(self) -> str:
        submit = f"{self.jobs / self.submit_seconds:,.0f}" if self.submit_seconds else "-"
        claim = f"{self.jobs / self.claim_seconds:,.0f}" if self.claim_seconds else "-"
        if not self.latencies:
            return f"| {self.name} | {self.jobs:,} | {submit} | {claim} | - | - |"
        p50 = statistics.median(self.latencies) * 1e3
        p99 = statistics.quantiles(self.latencies, n=100, method="inclusive")[98] * 1e3
        return f"| {self.name} | {self.jobs:,} | {submit} | {claim} | {p50:.2f} | {p99:.2f} |"


def run_phase(name: str, target: Target, jobs: int, submitters: int, claimers: int) -> Phase:
    with LoadRun(target, jobs, submitters, claimers) as run:
        load = run.wait(timeout=600)
    claimed = sorted(load.claimed_ids)
    if claimers and claimed != sorted(set(claimed)):
        raise AssertionError(f"{name}: a job was claimed twice")
    return Phase(
        name,
        jobs,
        _span([(part.started, part.finished) for part in load.submitted]),
        _span([(part.started, part.finished) for part in load.claimed]),
        [latency for part in load.claimed for latency in part.latencies],
    )


def _span(intervals: list[tuple[float, float]]) -> float | None:
    if not intervals:
        return None
    return max(end for _, end in intervals) - min(start for start, _ in intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        url = ensure_embedded(Path(home))
        try:
            version = redis.Redis.from_url(url).info("server")["redis_version"]
            queued = Target(url, "stress-queued")
            phases = [
                run_phase("submit only", queued, args.jobs, SUBMITTERS, 0),
                run_phase("claim only", queued, args.jobs, 0, CLAIMERS),
                run_phase("mixed", Target(url, "stress-mixed"), args.jobs, SUBMITTERS, CLAIMERS),
            ]
        finally:
            stop_embedded(Path(home))

    print(
        f"{SUBMITTERS} submitting processes, {CLAIMERS} claim loops (claim + complete), "
        f"redis-server {version}, Python {sys.version.split()[0]}"
    )
    print()
    print("| phase | jobs | submit jobs/s | claim+complete jobs/s | claim p50 ms | claim p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase in phases:
        print(phase.row())


if __name__ == "__main__":
    main()
