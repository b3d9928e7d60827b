"""What the queue and the store keep about a job: its record, its events, and their errors.

A record lives in one Redis hash whose fields are the `JobRecord` field names (plus `order`,
the queue's FIFO counter). Absent optional values are empty strings; dicts are JSON; booleans
are "0"/"1". Times are Unix seconds from the Redis server's clock, the clock every lease is
measured against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jobs.spec import JobSpec


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def is_final(self) -> bool:
        """Nothing happens to the job any more unless someone retries it."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class TrialStatus(StrEnum):
    """A sweep trial's status as the Sweep page and the client show it (cluster/sweep.py)."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"  # early, by the scheduler (ASHA)
    ERROR = "error"

    @property
    def is_final(self) -> bool:
        return self is not TrialStatus.RUNNING


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidTransition(RuntimeError):
    def __init__(self, job_id: str, status: str, action: str, allowed: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {status}; {action} needs {allowed}")
        self.job_id = job_id
        self.status = status


class LeaseLost(RuntimeError):
    """The dispatcher no longer holds the job: its lease expired and the reaper moved it on, or
    the job was claimed again since. Every leased call reports a lost lease this way."""

    def __init__(self, job_id: str, dispatcher_id: str) -> None:
        super().__init__(f"dispatcher {dispatcher_id} no longer holds the lease on job {job_id}")
        self.job_id = job_id
        self.dispatcher_id = dispatcher_id


class IdempotencyConflict(ValueError):
    """An idempotency key came back with a spec, priority or parent other than the ones it was
    first used with."""

    def __init__(self, idempotency_key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} already belongs to job {job_id}, submitted "
            "with another spec, priority or parent; use a new key, or the same request to get "
            "that job back"
        )
        self.job_id = job_id


@dataclass(frozen=True)
class Lease:
    """A dispatcher's hold on a running job, and the fencing token of everything it writes.

    `claim` counts every claim of the job and never goes back, so a write carrying an older
    lease (a dispatcher cut off past its deadline, or one that claimed the job again since) is
    refused in Redis, whoever sends it.
    """

    job_id: str
    owner: str  # the dispatcher's id
    claim: int


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    kind: str
    model_type: str
    dataset: str
    status: JobStatus
    priority: int
    attempts: int  # attempts used: failures of the run, plus the one running
    max_attempts: int
    claims: int  # times a dispatcher claimed it; the current lease's fencing token
    interruptions: int  # times a crash, not the run, handed it back (cap: MAX_INTERRUPTIONS)
    owner: str | None  # the id of the dispatcher holding (or last holding) the lease
    created_at: float
    updated_at: float
    started_at: float | None  # start of the latest attempt
    finished_at: float | None
    lease_deadline: float | None
    last_error: str | None
    last_traceback: str | None
    cancel_requested: bool
    pending_reason: str | None
    spec: dict[str, Any]
    result: dict[str, Any]
    progress: dict[str, Any]
    needs_cpus: float
    needs_gpus: float
    parent: str | None  # the sweep job of a trial

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> JobRecord:
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            id=text["id"],
            name=text["name"],
            kind=text["kind"],
            model_type=text["model_type"],
            dataset=text["dataset"],
            status=JobStatus(text["status"]),
            priority=int(text["priority"]),
            attempts=int(text["attempts"]),
            max_attempts=int(text["max_attempts"]),
            claims=int(text.get("claims") or 0),
            interruptions=int(text.get("interruptions") or 0),
            owner=text.get("owner") or None,
            created_at=float(text["created_at"]),
            updated_at=float(text["updated_at"]),
            started_at=_optional_float(text.get("started_at")),
            finished_at=_optional_float(text.get("finished_at")),
            lease_deadline=_optional_float(text.get("lease_deadline")),
            last_error=text.get("last_error") or None,
            last_traceback=text.get("last_traceback") or None,
            cancel_requested=text.get("cancel_requested") == "1",
            pending_reason=text.get("pending_reason") or None,
            spec=json.loads(text["spec"]),
            result=json.loads(text.get("result") or "{}"),
            progress=json.loads(text.get("progress") or "{}"),
            needs_cpus=float(text["needs_cpus"]),
            needs_gpus=float(text["needs_gpus"]),
            parent=text.get("parent") or None,
        )

    def job_spec(self) -> JobSpec:
        return JobSpec.model_validate(self.spec)


def new_job_fields(
    job_id: str, spec: JobSpec, priority: int, parent: str | None
) -> dict[str, str | int | float]:
    """Hash fields of a job about to be submitted; the submit script adds times and order."""
    return {
        "id": job_id,
        "name": spec.name,
        "kind": spec.kind,
        "model_type": spec.model_type,
        "dataset": spec.data.dataset,
        "status": JobStatus.QUEUED.value,
        "priority": priority,
        "attempts": 0,
        "max_attempts": spec.max_attempts,
        "claims": 0,
        "interruptions": 0,
        "cancel_requested": 0,
        "spec": spec.model_dump_json(),
        "needs_cpus": spec.needs_cpus,
        "needs_gpus": spec.needs_gpus,
        "parent": parent or "",
    }


@dataclass(frozen=True)
class Event:
    ts: float
    status: JobStatus
    message: str
    dispatcher_id: str | None = None  # the dispatcher that made the change, if one did

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        data = json.loads(raw)
        return cls(
            ts=float(data["ts"]),
            status=JobStatus(data["status"]),
            message=data["message"],
            # Events stored before the field was renamed name it "worker".
            dispatcher_id=data.get("dispatcher") or data.get("worker") or None,
        )


def _optional_float(value: str | None) -> float | None:
    return float(value) if value else None
