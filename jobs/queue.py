"""The durable job queue: a state machine whose every transition is one Lua script.

    queued -> running -> succeeded | failed | cancelled | dead
    running -> queued (retry after a failure; a hand-back after an interruption)
    failed | dead | cancelled -> queued (a user's retry)

Delivery is at least once. A claim is a lease (`Lease`): a dispatcher that stops renewing it
(crash, SIGKILL, lost node or network) has its job handed back by `requeue_expired` under the
same id, so the next claim resumes from that job's checkpoints instead of starting over. The
lease is also the fencing token of every write made for the run (`JobStore.write_for_run`,
`complete`, `fail`, ...): the claim number grows with each claim, so a copy of the run whose
lease is gone can write nothing, and a lost lease is always reported as `LeaseLost`.

Attempts count failures of the run itself: a claim uses one, and a hand-back that is not the
run's fault (`release` by a dispatcher that stops, `requeue_expired` after a crash) gives it
back. Crash hand-backs count as interruptions, capped at MAX_INTERRUPTIONS, so a job that kills
its dispatcher every time still reaches `dead`.

Every script reads the Redis server's clock, so dispatchers on hosts with skewed clocks agree
on lease deadlines and backoffs. Scripts compute per-job keys themselves, so genfleet needs one
Redis server, not a Redis Cluster (as rq does).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

from redis import Redis

from jobs.keys import (
    ENTRY_CHARS_KEPT,
    IDEMPOTENCY_TTL_SECONDS,
    MAX_INTERRUPTIONS,
    TRACEBACK_CHARS_KEPT,
    Keys,
)
from jobs.lua_scripts import LuaScript, load_script
from jobs.records import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    JobRecord,
    JobStatus,
    Lease,
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
    spec: JobSpec
    record: JobRecord
    lease: Lease

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    @property
    def attempt(self) -> int:
        """Attempts used, this one included: 1 until the run has failed once."""
        return self.record.attempts


@dataclass(frozen=True)
class Backoff:
    """Retry delay after failed attempt n: base * 2^(n-1), capped."""

    base_seconds: float = 2.0
    cap_seconds: float = 300.0


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
        self._scripts: dict[str, LuaScript] = {}

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
        """Queue a job and return its id.

        The same idempotency key with the same request (spec, priority and parent) returns the
        same id for 24 h; with another it raises IdempotencyConflict, naming the job the key
        belongs to.
        """
        priority = spec.priority if priority is None else _checked_priority(priority)
        idempotency = "" if idempotency_key is None else self.keys.idempotency(idempotency_key)
        request = spec.model_dump_json()
        if priority != spec.priority or parent is not None:
            # Only then: a key stored for a plain submit keeps its digest across an upgrade.
            request = json.dumps([request, priority, parent])
        digest = hashlib.sha256(request.encode()).hexdigest()
        while True:
            job_id = secrets.token_hex(6)
            fields = new_job_fields(job_id, spec, priority, parent)
            pairs = chain.from_iterable(fields.items())
            reply = self._run(
                "submit",
                job_id,
                idempotency,
                IDEMPOTENCY_TTL_SECONDS,
                digest,
                priority,
                spec.model_type,
                spec.kind,
                *pairs,
            )
            if isinstance(reply, list):  # [b"conflict", earlier id]
                raise IdempotencyConflict(idempotency_key or "", _text(reply[1]))
            if reply:  # None only when the random id was taken
                return _text(reply)

    def claim(
        self, dispatcher_id: str, lease_seconds: float, fits: Resources | None = None
    ) -> ClaimedJob | None:
        """Lease the best queued job that fits the free resources, or None."""
        free = ("", "") if fits is None else (fits.cpus, fits.gpus)
        while True:
            reply = self._run("claim", dispatcher_id, lease_seconds, self.claim_window, *free)
            if not reply:
                return None
            record = JobRecord.from_fields(dict(zip(reply[::2], reply[1::2], strict=True)))
            lease = Lease(record.id, dispatcher_id, record.claims)
            try:
                return ClaimedJob(record.job_spec(), record, lease)
            except ValueError as exc:  # valid when submitted, not under this host's limits
                self.fail(lease, f"spec: invalid on this dispatcher: {exc}", retryable=False)

    def renew_lease(self, lease: Lease, lease_seconds: float) -> None:
        self._leased("renew_lease", lease, lease_seconds)

    def complete(self, lease: Lease, result: dict) -> JobStatus:
        """Succeeded; or cancelled, result kept, when a cancel was pending (see finish.lua)."""
        return self._leased("finish", lease, "succeeded", json.dumps(result), "done")

    def mark_cancelled(self, lease: Lease) -> JobStatus:
        """The dispatcher has stopped a job whose cancel was requested."""
        return self._leased("finish", lease, "cancelled", "", "stopped after a cancel request")

    def release(self, lease: Lease, reason: str, interrupted: bool = False) -> JobStatus:
        """Hand a running job back without using an attempt: queued at its old place.

        `interrupted` for a fault outside the run (its relay or node lost), which counts
        toward MAX_INTERRUPTIONS; a dispatcher that stops cleanly does not count.
        """
        return self._leased("release", lease, reason, int(interrupted), MAX_INTERRUPTIONS)

    def fail(
        self,
        lease: Lease,
        error: str,
        traceback: str | None = None,
        retryable: bool = True,
    ) -> JobStatus:
        """End a failed attempt: queued for a retry after backoff, dead, failed or cancelled.

        The error keeps its first ENTRY_CHARS_KEPT characters, the traceback its last
        TRACEBACK_CHARS_KEPT, where the cause is."""
        return self._leased(
            "fail",
            lease,
            error[:ENTRY_CHARS_KEPT],
            (traceback or "")[-TRACEBACK_CHARS_KEPT:],
            int(retryable),
            self.backoff.base_seconds,
            self.backoff.cap_seconds,
        )

    def _leased(self, script: str, lease: Lease, *args: str | float) -> JobStatus:
        """Run a script behind the lease; raises LeaseLost when it no longer holds the job."""
        outcome = _text(self._run(script, lease.job_id, lease.owner, lease.claim, *args))
        if outcome == "missing":
            raise JobNotFound(lease.job_id)
        if outcome == "lost":
            raise LeaseLost(lease.job_id, lease.owner)
        return JobStatus.RUNNING if outcome == "ok" else JobStatus(outcome)

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
        """Reap jobs whose lease expired: back to the queue as interrupted, without using an
        attempt; dead after MAX_INTERRUPTIONS.

        `still_running(job_id)` lets the caller keep a job it knows is alive elsewhere.
        Returns the ids moved.
        """
        alive = still_running or (lambda job_id: False)
        return [
            job_id
            for job_id in self.expired()
            if not alive(job_id) and self._run("requeue_expired_lease", job_id, MAX_INTERRUPTIONS)
        ]

    def expired(self) -> list[str]:
        """Ids of running jobs whose lease deadline has passed on the server's clock."""
        return [_text(raw) for raw in self._run("expired_leases")]

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
