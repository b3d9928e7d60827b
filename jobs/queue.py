"""The durable job queue: a state machine whose every transition is one Lua script.

    queued -> running -> succeeded | failed | cancelled | dead
    running -> queued (retry after a failure, or the reaper after a lost lease)
    failed | dead | cancelled -> queued (a user's retry)

Delivery is at least once. A claim is a lease: a worker that stops renewing it (crash, SIGKILL,
lost node) has its job handed back by `requeue_expired` under the same id, so the next attempt
resumes from that job's checkpoints instead of starting over. Attempts are counted at claim, as
arq does, so a job that kills its worker every time still reaches `dead`.

Every script reads the Redis server's clock, so workers on hosts with skewed clocks agree on
lease deadlines and backoffs. Scripts compute per-job keys themselves, so genfleet needs one
Redis server, not a Redis Cluster (as rq does).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import chain

from redis import Redis
from redis.commands.core import Script

from jobs.keys import IDEMPOTENCY_TTL_SECONDS, Keys
from jobs.records import (
    InvalidTransition,
    JobNotFound,
    JobRecord,
    JobStatus,
    LeaseLost,
    new_job_fields,
)
from jobs.spec import JobSpec

PRIORITIES = range(10)


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    spec: JobSpec
    attempt: int  # 1 for the first claim; more means resume from the latest checkpoint
    record: JobRecord


@dataclass(frozen=True)
class Backoff:
    """Retry delay after failed attempt n: base * 2^(n-1), capped."""

    base_seconds: float = 2.0
    cap_seconds: float = 300.0


@cache
def _lua_source(name: str) -> str:
    return (files("jobs") / "lua" / f"{name}.lua").read_text()


def load_script(redis: Redis, keys: Keys, name: str) -> Script:
    """`jobs/lua/<name>.lua` behind the KEY table and the shared helpers, run by EVALSHA."""
    return redis.register_script(keys.lua_key_table() + _lua_source("common") + _lua_source(name))


class JobQueue:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "genfleet",
        backoff: Backoff = Backoff(),
        claim_window: int = 64,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.backoff = backoff
        self.claim_window = claim_window  # queued jobs one claim inspects for a fit
        self._scripts: dict[str, Script] = {}

    def _run(self, name: str, *args: str | int | float) -> object:
        if name not in self._scripts:
            self._scripts[name] = load_script(self.redis, self.keys, name)
        return self._scripts[name](args=list(args))

    def submit(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        priority: int | None = None,
        parent: str | None = None,
    ) -> str:
        """Queue a job and return its id; the same idempotency key returns the same id for 24 h."""
        priority = spec.priority if priority is None else _checked_priority(priority)
        idempotency = "" if idempotency_key is None else self.keys.idempotency(idempotency_key)
        while True:
            job_id = secrets.token_hex(6)
            fields = new_job_fields(job_id, spec, priority, parent)
            pairs = chain.from_iterable(fields.items())
            reply = self._run(
                "submit",
                job_id,
                idempotency,
                IDEMPOTENCY_TTL_SECONDS,
                priority,
                spec.model_type,
                spec.kind,
                *pairs,
            )
            if reply:  # None only when the random id was taken
                return _text(reply)

    def claim(
        self, worker_id: str, lease_seconds: float, fits: Resources | None = None
    ) -> ClaimedJob | None:
        """Lease the best queued job that fits the free resources, or None."""
        free = ("", "") if fits is None else (fits.cpus, fits.gpus)
        reply = self._run("claim", worker_id, lease_seconds, self.claim_window, *free)
        if not reply:
            return None
        record = JobRecord.from_fields(dict(zip(reply[::2], reply[1::2], strict=True)))
        return ClaimedJob(record.id, record.job_spec(), record.attempts, record)

    def renew_lease(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        return self._leased("renew_lease", job_id, worker_id, lease_seconds)

    def complete(self, job_id: str, worker_id: str, result: dict) -> bool:
        return self._leased("finish", job_id, worker_id, "succeeded", json.dumps(result), "done")

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """The dispatcher has stopped a job whose cancel was requested."""
        message = "stopped after a cancel request"
        return self._leased("finish", job_id, worker_id, "cancelled", "", message)

    def _leased(self, script: str, job_id: str, worker_id: str, *args: str | float) -> bool:
        """Run a script that needs the worker's lease; False when the lease was lost."""
        outcome = _text(self._run(script, job_id, worker_id, *args))
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome == "ok"

    def fail(
        self,
        job_id: str,
        worker_id: str,
        error: str,
        traceback: str | None = None,
        retryable: bool = True,
    ) -> JobStatus:
        """End a failed attempt: queued for a retry after backoff, dead, failed or cancelled.

        Raises LeaseLost when the worker no longer holds the job (the reaper already moved it).
        """
        outcome = _text(
            self._run(
                "fail",
                job_id,
                worker_id,
                error,
                traceback or "",
                int(retryable),
                self.backoff.base_seconds,
                self.backoff.cap_seconds,
            )
        )
        if outcome == "missing":
            raise JobNotFound(job_id)
        if outcome == "lost":
            raise LeaseLost(job_id, worker_id)
        return JobStatus(outcome)

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job now (-> cancelled) or flag a running one (-> stays running)."""
        found = self._found_status("cancel", job_id)
        if found in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD):
            raise InvalidTransition(job_id, found, "cancel", "a queued or running job")
        return JobStatus.RUNNING if found is JobStatus.RUNNING else JobStatus.CANCELLED

    def reject(self, job_id: str, reason: str) -> None:
        """Fail a queued job that can never run here, e.g. "needs 8 GPUs, the cluster has 4"."""
        found = self._found_status("reject", job_id, reason)
        if found is not JobStatus.QUEUED:
            raise InvalidTransition(job_id, found, "reject", "a queued job")

    def is_cancel_requested(self, job_id: str) -> bool:
        flag = self.redis.hget(self.keys.job(job_id), "cancel_requested")
        if flag is None:
            raise JobNotFound(job_id)
        return flag == b"1"

    def set_priority(self, job_id: str, priority: int) -> None:
        found = self._found_status("set_priority", job_id, _checked_priority(priority))
        if found not in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise InvalidTransition(job_id, found, "reprioritise", "a queued or running job")

    def retry(self, job_id: str) -> None:
        """Queue a failed, dead or cancelled job again, with its attempts reset."""
        found = self._found_status("retry", job_id)
        if found not in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED):
            raise InvalidTransition(job_id, found, "retry", "a failed, dead or cancelled job")

    def _found_status(self, script: str, job_id: str, *args: int | str) -> JobStatus:
        """Run a script that returns the status it found the job in."""
        found = _text(self._run(script, job_id, *args))
        if found == "missing":
            raise JobNotFound(job_id)
        return JobStatus(found)

    def requeue_expired(self, still_running: Callable[[str], bool] | None = None) -> list[str]:
        """Reap jobs whose lease expired: back to the queue, or dead when out of attempts.

        `still_running(job_id)` lets the caller keep a job it knows is alive elsewhere.
        Returns the ids moved.
        """
        expired = [_text(raw) for raw in self._run("expired_leases")]
        alive = still_running or (lambda job_id: False)
        return [
            job_id
            for job_id in expired
            if not alive(job_id) and self._run("requeue_expired_lease", job_id)
        ]

    def set_pending_reason(self, job_id: str, reason: str) -> None:
        """Why a queued job waits, e.g. "needs 4 GPUs, 2 free, 3 jobs ahead"."""
        if not self._run("update_fields", job_id, "pending_reason", reason):
            raise JobNotFound(job_id)

    def queue_position(self, job_id: str) -> int | None:
        """Jobs ahead of this one in the queue; None when it is not waiting in the queue."""
        return self.redis.zrank(self.keys.queue, job_id)

    def queued(self, limit: int = 100) -> list[str]:
        """Ids at the head of the queue, in the order they will be claimed."""
        return [_text(raw) for raw in self.redis.zrange(self.keys.queue, 0, limit - 1)]


def _checked_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or priority not in PRIORITIES:
        raise ValueError(f"priority: must be an integer 0..9, got {priority!r}")
    return priority


def _text(raw: bytes) -> str:
    return raw.decode()
