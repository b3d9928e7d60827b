"""Genfleet issue 11's chaos run: small jobs on a cluster of separate hosts while faults strike.

    .venv/bin/python bench/chaos_bench.py          # 200 jobs, faults for 10 min: hours
    .venv/bin/python bench/chaos_bench.py --quick  # 12 jobs, 2 faults: 20 min on 2 busy cores

Needs root and `ip netns`: it builds the multi-host cluster of tests/cluster/ (a Redis host, a
Ray head, `--dispatchers` dispatcher hosts and `--workers` worker hosts of 1 CPU each, every
host a network namespace) and removes all of it at the end, also on an error or Ctrl-C.

`--submitters` threads, each with its own Redis client, submit `--jobs` tiny PixelCNN runs on
digits between them, spread over the first half of the fault window; a submit that hits a Redis
outage is retried with the same idempotency key, so it never makes a second job. The workers
join only once a job waits for nodes: that is fault (a). Then, for `--fault-seconds` (or
`--max-faults`), one fault at a time, each kind once per round in a seeded random order, each
followed by its repair and by a wait for the next success:

    (a) a worker host joins late (at most one beyond `--workers` at a time)
    (b) a worker host killed mid-run, every process in it; a replacement host joins
    (c) a worker host cut off (iptables DROP) until Ray marks its node dead, healed, Ray restarted
    (d) a dispatcher host cut off from Redis for CUT_LEASES leases, then healed
    (e) the Redis host killed and restarted on its append-only file
    (f) SIGTERM on a dispatcher; a new dispatcher host replaces it

Time to recover: from the end of the repair (from the signal itself for (f), whose repair is
the other dispatcher) to the first job that succeeds after it. Then it waits, within
`--timeout` for the whole run, until every job is final, and prints from the store: jobs,
succeeded, failed by infrastructure (a failed, dead or cancelled record: nobody cancels and
every run can succeed), duplicate runs (a job with more than one final event, an epoch's metrics
recorded twice, or a job in the store that no submitter got back), lost (a job not final at
the end, missing, or never submitted), claims, attempts and interruptions per job, and each
fault kind's recovery times. Exits 1 when any of the three goals (0 failed, 0 duplicates,
0 lost) is missed or a repair failed, 2 when this machine cannot build hosts.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).parents[1]))  # `tests.cluster`, run from anywhere

from jobs.queue import JobQueue
from jobs.records import JobRecord, JobStatus
from jobs.spec import JobSpec, validate_spec_dict
from jobs.store import JobStore
from tests.cluster.harness import PREFIX, Cluster, DispatcherHost, RayWorker, RedisHost
from tests.cluster.network import Network, is_alive, unavailable_reason

log = logging.getLogger("bench.chaos")

JOB_SPEC = {
    "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
    "data": {"dataset": "digits"},
    "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "num_samples": 4},
    "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 3},
}
WORKER_CPUS = 1
CUT_LEASES = 3  # (d) lasts this many leases: the dispatcher drops its runs, another takes them
REDIS_DOWN_SECONDS = 2.0  # (e): between the kill and the restart
EXIT_SECONDS = 60.0  # (f): a dispatcher stops its runs and hands its jobs back within this
WAITING_SECONDS = 120.0  # (a): until a job says it waits for nodes
RECOVERY_SECONDS = 600.0  # a fault without a success this long after is left unrecovered
SUBMIT_RETRY_SECONDS = 120.0  # one job's submit, retried across a Redis outage
GAP_SECONDS = 20.0  # at most this long between a recovery and the next fault, drawn at random
POLL_SECONDS = 1.0
JOIN_SECONDS = 30.0  # submitter threads, once told to stop
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
FAILED_BY_INFRASTRUCTURE = {JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED}
QUICK = {"jobs": 12, "max_faults": 2, "fault_seconds": 300.0, "timeout": 2700.0}


class FaultKind(StrEnum):
    LATE_WORKER = "a"
    WORKER_KILLED = "b"
    WORKER_CUT = "c"
    DISPATCHER_CUT = "d"
    REDIS_RESTARTED = "e"
    DISPATCHER_SIGTERM = "f"

    @property
    def title(self) -> str:
        return f"({self.value}) {FAULT_TITLES[self]}"


FAULT_TITLES = {
    FaultKind.LATE_WORKER: "worker joins late",
    FaultKind.WORKER_KILLED: "worker host killed",
    FaultKind.WORKER_CUT: "worker host cut off",
    FaultKind.DISPATCHER_CUT: "dispatcher cut from Redis",
    FaultKind.REDIS_RESTARTED: "Redis restarted",
    FaultKind.DISPATCHER_SIGTERM: "SIGTERM on a dispatcher",
}


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic()

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


@dataclass
class Fault:
    """Times are time.time(): one kernel clock with the Redis server's, which stamps
    `finished_at`, since every host is a namespace of this machine."""

    kind: FaultKind
    detail: str
    struck_at: float
    repaired_at: float
    recovered_at: float | None = None

    @property
    def measured_from(self) -> float:
        # SIGTERM needs no repair to recover: the other dispatcher takes the jobs handed back.
        return self.struck_at if self.kind is FaultKind.DISPATCHER_SIGTERM else self.repaired_at

    @property
    def recovery_seconds(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.measured_from


@dataclass
class Submitter:
    """One client submitting `count` jobs, `pause_seconds` apart, in its own thread."""

    index: int
    count: int
    pause_seconds: float
    job_ids: list[str] = field(default_factory=list)
    retries: int = 0  # submits that hit a Redis error and went again with the same key
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self, redis_host: RedisHost, stop: threading.Event) -> None:
        self.thread = threading.Thread(
            target=self.run, args=(redis_host, stop), name=f"submitter-{self.index}", daemon=True
        )
        self.thread.start()

    def run(self, redis_host: RedisHost, stop: threading.Event) -> None:
        queue = JobQueue(redis_host.client(), PREFIX)
        try:
            for number in range(self.count):
                if number and stop.wait(self.pause_seconds):
                    return
                key = f"chaos-s{self.index}-{number}"
                self.job_ids.append(self.submit(queue, job_spec(key), key, stop))
        except Exception as exc:  # reported as jobs never submitted
            self.error = f"submitter {self.index}: {type(exc).__name__}: {exc}"

    def submit(self, queue: JobQueue, spec: JobSpec, key: str, stop: threading.Event) -> str:
        give_up = time.monotonic() + SUBMIT_RETRY_SECONDS
        while True:
            try:
                return queue.submit(spec, idempotency_key=key)
            except REDIS_ERRORS:
                if time.monotonic() > give_up or stop.is_set():
                    raise
                self.retries += 1
                stop.wait(POLL_SECONDS)

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


def job_spec(name: str) -> JobSpec:
    return validate_spec_dict(deepcopy(JOB_SPEC) | {"name": name})


def start_submitters(
    redis_host: RedisHost, jobs: int, count: int, spread_seconds: float, stop: threading.Event
) -> list[Submitter]:
    shares = [jobs // count + (index < jobs % count) for index in range(count)]
    submitters = [
        Submitter(index, share, spread_seconds / max(share, 1))
        for index, share in enumerate(shares)
    ]
    for submitter in submitters:
        submitter.start(redis_host, stop)
    return submitters


def submitted_ids(submitters: Sequence[Submitter]) -> list[str]:
    return [job_id for submitter in submitters for job_id in list(submitter.job_ids)]


def read_records(store: JobStore, job_ids: list[str]) -> list[JobRecord] | None:
    """The records, or None while Redis does not answer (restarting, loading its file)."""
    try:
        return store.get_many(job_ids)
    except REDIS_ERRORS:
        return None


class Chaos:
    """Strikes one fault at a time on `cluster` and repairs it; draws each kind once per round."""

    def __init__(self, cluster: Cluster, rng: random.Random, base_workers: int) -> None:
        self.cluster = cluster
        self.rng = rng
        self.max_workers = base_workers + 1
        self._round: list[FaultKind] = []
        self.strikes: dict[FaultKind, Callable[[], Fault]] = {
            FaultKind.LATE_WORKER: self.late_worker,
            FaultKind.WORKER_KILLED: self.kill_worker,
            FaultKind.WORKER_CUT: self.cut_worker,
            FaultKind.DISPATCHER_CUT: self.cut_dispatcher,
            FaultKind.REDIS_RESTARTED: self.restart_redis,
            FaultKind.DISPATCHER_SIGTERM: self.terminate_dispatcher,
        }

    def draw(self) -> FaultKind:
        """The next kind of this round; a late worker only while no extra one is up."""
        for _ in range(len(FaultKind) + 1):  # one kind at most is skipped
            if not self._round:
                self._round = self.rng.sample(list(FaultKind), len(FaultKind))
            kind = self._round.pop()
            if kind is not FaultKind.LATE_WORKER or len(self.cluster.workers) < self.max_workers:
                return kind
        raise AssertionError("every kind of a round was skipped")

    def strike(self, kind: FaultKind) -> Fault:
        return self.strikes[kind]()

    def late_worker(self) -> Fault:
        struck = time.time()
        worker = self.cluster.add_worker(cpus=WORKER_CPUS)
        return Fault(FaultKind.LATE_WORKER, f"{worker.host.name} joined", struck, time.time())

    def kill_worker(self) -> Fault:
        victim = self.busy_worker()
        struck = time.time()
        victim.host.kill_all()
        self.cluster.head.wait_until_dead({victim.node_id})
        self.cluster.remove(victim.host)
        replacement = self.cluster.add_worker(cpus=WORKER_CPUS)
        detail = f"{victim.host.name} killed, {replacement.host.name} joined"
        return Fault(FaultKind.WORKER_KILLED, detail, struck, time.time())

    def cut_worker(self) -> Fault:
        victim = self.busy_worker()
        struck = time.time()
        victim.host.cut()
        self.cluster.head.wait_until_dead({victim.node_id})
        cut_seconds = time.time() - struck
        victim.host.heal()
        # Its raylet is dead to the GCS: the host starts Ray again, as a rebooted machine would.
        victim.host.kill_all()
        victim.start()
        detail = f"{victim.host.name} cut {cut_seconds:.0f} s, healed, rejoined"
        return Fault(FaultKind.WORKER_CUT, detail, struck, time.time())

    def cut_dispatcher(self) -> Fault:
        victim = self.busy_dispatcher()
        redis_host = self.cluster.redis.host
        struck = time.time()
        redis_host.cut(victim.host)
        time.sleep(CUT_LEASES * victim.lease_seconds)
        redis_host.heal(victim.host)
        detail = f"{victim.dispatcher_id} cut {CUT_LEASES * victim.lease_seconds:g} s, healed"
        return Fault(FaultKind.DISPATCHER_CUT, detail, struck, time.time())

    def restart_redis(self) -> Fault:
        struck = time.time()
        self.cluster.redis.host.kill_all()
        time.sleep(REDIS_DOWN_SECONDS)
        self.cluster.redis.start()
        detail = f"down {time.time() - struck:.0f} s"
        return Fault(FaultKind.REDIS_RESTARTED, detail, struck, time.time())

    def terminate_dispatcher(self) -> Fault:
        victim = self.busy_dispatcher()
        pid = dispatcher_pid(victim)
        struck = time.time()
        os.kill(pid, signal.SIGTERM)
        exited = wait_for_exit(pid, EXIT_SECONDS)
        self.cluster.remove(victim.host)  # SIGKILLs it, had it not exited
        replacement = self.cluster.add_dispatcher()
        how = "exited" if exited else f"still up after {EXIT_SECONDS:g} s, killed"
        detail = f"{victim.dispatcher_id} {how}, {replacement.dispatcher_id} started"
        return Fault(FaultKind.DISPATCHER_SIGTERM, detail, struck, time.time())

    def busy_worker(self) -> RayWorker:
        """A worker that runs a job, as the dispatchers publish it, or any worker."""
        status = self._cluster_status()
        busy_nodes = {node for nodes in status.get("running_jobs", {}).values() for node in nodes}
        busy = [worker for worker in self.cluster.workers if worker.node_id in busy_nodes]
        return self.rng.choice(busy or self.cluster.workers)

    def busy_dispatcher(self) -> DispatcherHost:
        """A dispatcher that runs a job, or any dispatcher."""
        counts = {
            entry["dispatcher"]: entry["running_job_count"]
            for entry in self._cluster_status().get("dispatchers", [])
        }
        dispatchers = self.cluster.dispatchers
        busy = [d for d in dispatchers if counts.get(d.dispatcher_id or "", 0) > 0]
        return self.rng.choice(busy or dispatchers)

    def _cluster_status(self) -> dict[str, Any]:
        try:
            return self.cluster.store().cluster_status() or {}
        except REDIS_ERRORS:
            return {}


def dispatcher_pid(dispatcher: DispatcherHost) -> int:
    """Its id is "<host>-<pid>", the pid of the `genfleet dispatcher` the harness started."""
    if dispatcher.dispatcher_id is None:
        raise RuntimeError(f"dispatcher on {dispatcher.host.name} has not started")
    return int(dispatcher.dispatcher_id.rsplit("-", 1)[1])


def wait_for_exit(pid: int, seconds: float) -> bool:
    give_up = time.monotonic() + seconds
    while is_alive(pid):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.25)
    return True


@dataclass(frozen=True)
class Settings:
    jobs: int
    submitters: int
    dispatchers: int
    workers: int
    fault_seconds: float
    max_faults: int | None
    seed: int
    timeout: float


class ChaosRun:
    """The run's steps: build the cluster, submit, strike the faults, wait, read the store."""

    def __init__(self, network: Network, settings: Settings, deadline: Deadline) -> None:
        self.settings = settings
        self.deadline = deadline
        self.cluster = Cluster(network)
        self.store = self.cluster.store()  # one client: it reconnects after a Redis restart
        self.chaos = Chaos(self.cluster, random.Random(settings.seed), settings.workers)
        self.stop = threading.Event()
        self.submitters: list[Submitter] = []
        self.faults: list[Fault] = []
        self.striking: FaultKind | None = None  # while a fault and its repair are under way
        self.repair_error: str | None = None

    def execute(self) -> None:
        try:
            self.set_up()
            self.workers_join_late()
            self.strike_faults()
        except (RuntimeError, TimeoutError) as exc:  # the harness's: a service did not come up
            during = f" during {self.striking.title}" if self.striking else ""
            self.repair_error = f"{type(exc).__name__}{during}: {str(exc).splitlines()[0]}"
            log.error("%s\n%s\n%s", self.repair_error, exc, self.cluster.logs())
        try:
            self.wait_all_final()
        finally:
            self.stop.set()
            for submitter in self.submitters:
                if submitter.thread is not None:
                    submitter.thread.join(JOIN_SECONDS)

    def set_up(self) -> None:
        self.cluster.start()
        for _ in range(self.settings.dispatchers):
            self.cluster.add_dispatcher()
        log.info("Redis, Ray head and %d dispatchers up", self.settings.dispatchers)
        self.submitters = start_submitters(
            self.cluster.redis,
            self.settings.jobs,
            self.settings.submitters,
            self.settings.fault_seconds / 2,
            self.stop,
        )

    def workers_join_late(self) -> None:
        """Fault (a) at the start: jobs queue with no worker, then the workers join."""
        struck = time.time()
        waiting = self.wait_for_waiting_job()
        first = self.cluster.add_worker(cpus=WORKER_CPUS)
        detail = f"{first.host.name} first of {self.settings.workers} joined"
        if waiting:
            detail = f"a job waited for nodes, then {detail}"
        fault = self.record(Fault(FaultKind.LATE_WORKER, detail, struck, time.time()))
        for _ in range(self.settings.workers - 1):
            self.cluster.add_worker(cpus=WORKER_CPUS)
        self.recover(fault)

    def wait_for_waiting_job(self) -> bool:
        give_up = time.monotonic() + min(WAITING_SECONDS, self.deadline.left())
        while time.monotonic() < give_up:
            records = read_records(self.store, submitted_ids(self.submitters)) or []
            if any((r.pending_reason or "").startswith("waiting for nodes") for r in records):
                return True
            time.sleep(POLL_SECONDS)
        return False

    def strike_faults(self) -> None:
        window_ends = time.monotonic() + self.settings.fault_seconds
        limit = self.settings.max_faults
        for _ in range(limit if limit is not None else sys.maxsize):
            if time.monotonic() > window_ends or not self.deadline.left() or self.all_final():
                return
            time.sleep(self.chaos.rng.uniform(0, min(GAP_SECONDS, self.deadline.left())))
            self.striking = self.chaos.draw()
            self.recover(self.record(self.chaos.strike(self.striking)))
            self.striking = None

    def record(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        log.info("%s: %s", fault.kind.title, fault.detail)
        return fault

    def recover(self, fault: Fault) -> None:
        self.wait_for_recovery(fault)
        seconds = fault.recovery_seconds
        log.info("  recovered in %s", "-" if seconds is None else f"{seconds:.1f} s")

    def wait_for_recovery(self, fault: Fault) -> None:
        """Until a job succeeds after the fault, none is left to run, or RECOVERY_SECONDS."""
        give_up = time.monotonic() + min(RECOVERY_SECONDS, self.deadline.left())
        while time.monotonic() < give_up:
            records = read_records(self.store, submitted_ids(self.submitters)) or []
            finished = [
                at
                for record in records
                if record.status is JobStatus.SUCCEEDED
                and (at := record.finished_at) is not None
                and at >= fault.measured_from
            ]
            if finished:
                fault.recovered_at = min(finished)
                return
            if self.all_final():
                return
            time.sleep(POLL_SECONDS)

    def all_final(self) -> bool:
        """Every submitter is done and every job it submitted is final."""
        if not all(submitter.done for submitter in self.submitters):
            return False
        records = read_records(self.store, submitted_ids(self.submitters))
        return records is not None and all(record.status.is_final for record in records)

    def wait_all_final(self) -> None:
        while self.deadline.left() and not self.all_final():
            time.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Outcome:
    """What the store proves at the end."""

    requested: int
    submitted: int
    succeeded: int
    failed: list[JobRecord]
    duplicated: list[str]  # job ids run twice, and jobs no submitter got back
    lost: int
    claims: list[int]
    attempts: list[int]
    interruptions: list[int]

    @property
    def goals_met(self) -> bool:
        return not self.failed and not self.duplicated and not self.lost


def read_outcome(store: JobStore, requested: int, job_ids: list[str]) -> Outcome:
    records = store.get_many(job_ids)
    in_store = sum(store.counts_by_status().values())
    duplicated = [record.id for record in records if ran_twice(store, record.id)]
    duplicated += ["(unknown)"] * max(0, in_store - len(set(job_ids)))
    final = [record for record in records if record.status.is_final]
    return Outcome(
        requested=requested,
        submitted=len(job_ids),
        succeeded=sum(record.status is JobStatus.SUCCEEDED for record in records),
        failed=[record for record in records if record.status in FAILED_BY_INFRASTRUCTURE],
        duplicated=duplicated,
        lost=requested - len(final),
        claims=[record.claims for record in records],
        attempts=[record.attempts for record in records],
        interruptions=[record.interruptions for record in records],
    )


def ran_twice(store: JobStore, job_id: str) -> bool:
    """More than one final event, or an epoch's metrics recorded more than once."""
    finals = [event for event in store.events(job_id) if event.status.is_final]
    epochs = [row.get("epoch") for row in store.metrics(job_id)]
    return len(finals) > 1 or len(epochs) != len(set(epochs))


def aligned(rows: Sequence[Sequence[str]], align: str) -> str:
    """Plain-text columns, each aligned as `align` says: "<" left, ">" right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(align))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if side == "<" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def per_job(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} mean, {max(values)} max"


def seconds_text(values: list[float], pick: Callable[[list[float]], float]) -> str:
    return f"{pick(values):.1f}" if values else "-"


def summary_table(outcome: Outcome, retries: int, wall_seconds: float) -> str:
    rows = [
        ["jobs", str(outcome.requested), ""],
        ["succeeded", str(outcome.succeeded), ""],
        ["failed by infrastructure", str(len(outcome.failed)), "goal 0"],
        ["duplicate runs", str(len(outcome.duplicated)), "goal 0"],
        ["lost", str(outcome.lost), "goal 0"],
        ["attempts per job", per_job(outcome.attempts), ""],
        ["claims per job", per_job(outcome.claims), ""],
        ["interruptions per job", per_job(outcome.interruptions), ""],
        ["submits retried", str(retries), ""],
        ["wall time", f"{wall_seconds:.0f} s", ""],
    ]
    return aligned(rows, "<<<")


def fault_table(faults: list[Fault]) -> str:
    rows = [["fault", "count", "recovered", "median s", "max s"]]
    for kind in FaultKind:
        mine = [fault for fault in faults if fault.kind is kind]
        seconds = [s for fault in mine if (s := fault.recovery_seconds) is not None]
        rows.append(
            [
                kind.title,
                str(len(mine)),
                str(len(seconds)),
                seconds_text(seconds, statistics.median),
                seconds_text(seconds, max),
            ]
        )
    return aligned(rows, "<>>>>")


def fault_log(faults: list[Fault], started: float) -> str:
    if not faults:
        return "no fault struck"
    rows = [["#", "fault", "at s", "repaired s", "recovered s", "what"]]
    for number, fault in enumerate(faults, 1):
        seconds = fault.recovery_seconds
        rows.append(
            [
                str(number),
                fault.kind.title,
                f"{fault.struck_at - started:.0f}",
                f"{fault.repaired_at - started:.0f}",
                "-" if seconds is None else f"{seconds:.1f}",
                fault.detail,
            ]
        )
    return aligned(rows, "><>>><")


def report(run: ChaosRun, outcome: Outcome, started: float) -> str:
    settings = run.settings
    head = (
        f"chaos bench: {settings.jobs} jobs from {settings.submitters} submitters on "
        f"{settings.dispatchers} dispatchers and {settings.workers} worker hosts, seed "
        f"{settings.seed}, {len(run.faults)} faults"
    )
    problems = [submitter.error for submitter in run.submitters if submitter.error]
    problems += [f"{r.id} {r.status}: {r.last_error}" for r in outcome.failed[:5]]
    problems += [f"{job_id} ran twice" for job_id in outcome.duplicated[:5]]
    if run.repair_error:
        problems.append(f"faults stopped: {run.repair_error}")
    if not run.deadline.left():
        problems.append(f"--timeout {settings.timeout:g} s reached")
    retries = sum(submitter.retries for submitter in run.submitters)
    parts = [
        head,
        summary_table(outcome, retries, time.time() - started),
        fault_table(run.faults),
        fault_log(run.faults, started),
    ]
    if problems:
        parts.append("\n".join(problems))
    return "\n\n".join(parts)


def parse_settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3, help="worker hosts, 1 CPU each")
    parser.add_argument(
        "--fault-seconds", type=float, default=600.0, help="how long faults are drawn"
    )
    parser.add_argument("--max-faults", type=int, default=None, help="after fault (a) at start")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=14400.0, help="bound on the whole run")
    parser.add_argument("--quick", action="store_true", help="12 jobs, 2 faults: a short try")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)  # flags given beside --quick still win
    checks = {  # flag: (valid, what would be)
        "--jobs": (args.jobs >= 1, "at least 1"),
        "--submitters": (args.submitters >= 1, "at least 1"),
        "--dispatchers": (2 <= args.dispatchers <= 8, "2 to 8: (d) and (f) need a second one"),
        "--workers": (1 <= args.workers <= 8, "1 to 8: 9 worker addresses, one for (a)'s extra"),
        "--fault-seconds": (args.fault_seconds >= 0, "at least 0"),
        "--max-faults": (args.max_faults is None or args.max_faults >= 0, "at least 0"),
        "--timeout": (args.timeout > 0, "more than 0"),
    }
    for flag, (valid, expected) in checks.items():
        if not valid:
            value = getattr(args, flag[2:].replace("-", "_"))
            parser.error(f"{flag}: must be {expected}, got {value}")
    return Settings(
        args.jobs,
        args.submitters,
        args.dispatchers,
        args.workers,
        args.fault_seconds,
        args.max_faults,
        args.seed,
        args.timeout,
    )


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (make, a CI runner) takes the same way out as Ctrl-C: the hosts are removed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"chaos_bench: {reason}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, interrupt)
    started = time.time()
    deadline = Deadline(time.monotonic() + settings.timeout)
    with Network() as network:
        run = ChaosRun(network, settings, deadline)
        run.execute()
        job_ids = submitted_ids(run.submitters)
        outcome = read_outcome(run.store, settings.jobs, job_ids)
    print(report(run, outcome, started))
    return 0 if outcome.goals_met and run.repair_error is None else 1


if __name__ == "__main__":
    sys.exit(main())
