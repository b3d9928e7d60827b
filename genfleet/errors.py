"""What the client raises: one type per outcome, each carrying the CLI's message.

The spec, lookup, state and embedded-Redis errors are the queue's own (re-exported here, so a
notebook needs one import); the rest are the client's. A Redis that cannot be reached raises
redis-py's own `redis.ConnectionError`.
"""

from __future__ import annotations

from jobs.records import InvalidTransition, JobNotFound, JobStatus
from jobs.redis_server import EmbeddedRedisError
from jobs.spec_errors import FieldError, SpecError

__all__ = [
    "EmbeddedRedisError",
    "FieldError",
    "InvalidTransition",
    "JobNotFound",
    "JobTimeout",
    "NotASweep",
    "SpecError",
    "SpecFileError",
]


class SpecFileError(ValueError):
    """A spec file cannot be read; the message names the file."""


class JobTimeout(TimeoutError):
    """`Job.wait` gave up; the job itself goes on."""

    def __init__(self, job_id: str, timeout: float, status: JobStatus) -> None:
        super().__init__(f"job {job_id} is still {status.value} after {timeout:g} s")
        self.job_id = job_id
        self.status = status


class NotASweep(ValueError):
    def __init__(self, job_id: str, kind: str) -> None:
        super().__init__(f"job {job_id} is a {kind} job; only sweeps have trials")
        self.job_id = job_id
