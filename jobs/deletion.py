"""Deleting finished jobs with everything they left, by hand (`genfleet delete`), by age
(`genfleet gc`) or by the dispatcher's retention (GENFLEET_RETENTION_DAYS).

A delete is two steps. `delete_job.lua` removes the job's Redis keys and index entries at
once, refusing a queued or running job, and notes the id in the `deleted` zset; then the
job's folders in the runs' storage (its own and its sweep trials', where its images,
checkpoints and Ray results lie) are removed and the note with them. A delete stopped
between the steps leaves the note, and `finish_deletes` removes those folders later. Once the
record is gone every late write for the job is refused (write_run.lua, write_artifacts.lua).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jobs.lua_scripts import load_script
from jobs.records import JobNotFound, JobStatus
from jobs.run_storage import RunStorage
from jobs.store import JobStore, NoStorage

FINAL_STATUSES = tuple(status for status in JobStatus if status.is_final)
AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A note in `deleted` younger than this may belong to a delete still removing its folders.
DELETE_GRACE_SECONDS = 3600
BATCH = 500  # jobs per pipeline of deletes and per listing of the storage root


@dataclass(frozen=True)
class Deleted:
    job_id: str
    trials: tuple[str, ...]
    folders: tuple[str, ...]  # under the storage root


class NotDeletable(Exception):
    """The job is queued or running: its dispatcher would write on for it. `deleted` holds the
    jobs of the same batch that were deleted, when it was found so only after the check (it
    was retried meanwhile)."""

    def __init__(self, job_id: str, status: JobStatus, deleted: Sequence[Deleted] = ()) -> None:
        message = f"job {job_id} is {status}: cancel it first (genfleet cancel {job_id})"
        if deleted:
            message += f"; {len(deleted)} job(s) of the batch were deleted"
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.deleted = tuple(deleted)


def check_deletable(store: JobStore, job_ids: Sequence[str]) -> None:
    """Raises JobNotFound or NotDeletable for the first job that cannot be deleted."""
    pipe = store.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(store.keys.job(job_id), "status")
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        if raw is None:
            raise JobNotFound(job_id)
        if not (status := JobStatus(raw.decode())).is_final:
            raise NotDeletable(job_id, status)


def delete_jobs(store: JobStore, job_ids: Iterable[str]) -> list[Deleted]:
    """Delete finished jobs, a sweep with its trials; checks every one first, so that an
    unknown or unfinished job among them deletes none."""
    unique = list(dict.fromkeys(job_ids))
    check_deletable(store, unique)
    finish_deletes(store)
    deleted, refused = _delete(store, unique)
    if refused:  # retried since the check
        job_id, status = refused[0]
        raise NotDeletable(job_id, status, deleted)
    return deleted


def _delete(
    store: JobStore, job_ids: list[str], cutoff: float | None = None
) -> tuple[list[Deleted], list[tuple[str, JobStatus]]]:
    """The deleted jobs, and the ones found queued or running, which are left as they were;
    with a `cutoff`, a job that finished at or after it is left too (retried since listed)."""
    storage = storage_of(store)
    script = load_script(store.redis, store.keys, "delete_job")
    deleted: list[Deleted] = []
    refused: list[tuple[str, JobStatus]] = []
    for start in range(0, len(job_ids), BATCH):
        batch = job_ids[start : start + BATCH]
        pipe = store.redis.pipeline(transaction=False)
        for job_id in batch:
            script(args=[job_id, "" if cutoff is None else repr(cutoff)], client=pipe)
        trials_by_job: dict[str, tuple[str, ...]] = {}
        for job_id, (outcome, *rest) in zip(batch, pipe.execute(), strict=True):
            if outcome == b"deleted":
                trials_by_job[job_id] = tuple(sorted(raw.decode() for raw in rest))
            elif outcome == b"active":
                refused.append((job_id, JobStatus(rest[0].decode())))
        folders = _remove_folders(store, storage, list(trials_by_job))
        deleted += [Deleted(job, trials, folders[job]) for job, trials in trials_by_job.items()]
    return deleted, refused


def storage_of(store: JobStore) -> RunStorage:
    """The runs' storage, which every delete and migration needs."""
    if store.storage is None:
        raise NoStorage("jobs' folders lie in the runs' storage, and this store was given none")
    return store.storage


def _remove_folders(
    store: JobStore, storage: RunStorage, job_ids: list[str]
) -> dict[str, tuple[str, ...]]:
    """Remove deleted jobs' folders, from one listing of the root, then their notes."""
    if not job_ids:
        return {}
    folders = storage.folders_of(set(job_ids))
    for job_folders in folders.values():
        for folder in job_folders:
            storage.remove_folder(folder)
    store.redis.zrem(store.keys.deleted, *job_ids)
    return {job_id: tuple(job_folders) for job_id, job_folders in folders.items()}


def finish_deletes(store: JobStore, grace_seconds: float = DELETE_GRACE_SECONDS) -> list[str]:
    """Remove the folders of jobs deleted more than `grace_seconds` ago whose delete stopped
    before it had removed them; returns those jobs' ids."""
    storage = storage_of(store)
    before = server_time(store) - grace_seconds
    stale = [raw.decode() for raw in store.redis.zrangebyscore(store.keys.deleted, 0, before)]
    for start in range(0, len(stale), BATCH):
        _remove_folders(store, storage, stale[start : start + BATCH])
    return stale


def server_time(store: JobStore) -> float:
    """Now on the Redis server's clock, the one every record's times are stamped with."""
    seconds, microseconds = store.redis.time()
    return seconds + microseconds / 1e6


def final_statuses(names: Iterable[str], argument: str = "statuses") -> tuple[JobStatus, ...]:
    """Statuses a finished job can have, from their names; a ValueError names the others."""
    valid = ", ".join(FINAL_STATUSES)
    chosen = []
    for name in names:
        if name not in FINAL_STATUSES:
            raise ValueError(f"{argument}: must be among {valid}, got {name!r}")
        chosen.append(JobStatus(name))
    return tuple(chosen)


def finished_before(
    store: JobStore, cutoff: float, statuses: Iterable[str] | None = None
) -> list[str]:
    """Ids of the jobs in these final statuses (all when None) that finished before `cutoff`
    (Unix seconds, the server's clock), oldest submitted first within each status. Reads
    every such record's times, BATCH per round trip."""
    found = []
    for status in FINAL_STATUSES if statuses is None else final_statuses(statuses):
        job_ids = store.job_ids(status)
        for start in range(0, len(job_ids), BATCH):
            batch = job_ids[start : start + BATCH]
            pipe = store.redis.pipeline(transaction=False)
            for job_id in batch:
                # A record from before finished_at was stamped on every ending has updated_at.
                pipe.hmget(store.keys.job(job_id), "finished_at", "updated_at")
            for job_id, (finished, updated) in zip(batch, pipe.execute(), strict=True):
                stamp = finished or updated
                if stamp and float(stamp) < cutoff:
                    found.append(job_id)
    return found


def collect_garbage(
    store: JobStore,
    older_than_seconds: float,
    statuses: Iterable[str] | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> list[str]:
    """Delete the jobs that finished more than `older_than_seconds` ago (in these final
    statuses, all when None), at most `limit` of them; returns their ids. `dry_run` only
    lists them. Also finishes the deletes that stopped half way."""
    if older_than_seconds < 0:
        raise ValueError(f"older_than_seconds: must be >= 0, got {older_than_seconds!r}")
    cutoff = server_time(store) - older_than_seconds
    job_ids = finished_before(store, cutoff, statuses)[:limit]
    if dry_run:
        return job_ids
    finish_deletes(store)
    deleted, _ = _delete(store, job_ids, cutoff)  # a job retried meanwhile is kept
    return [entry.job_id for entry in deleted]


def apply_retention(store: JobStore, retention_days: float) -> list[str]:
    """The dispatcher's housekeeping under GENFLEET_RETENTION_DAYS: finish stopped deletes,
    then delete jobs that finished more than `retention_days` ago, BATCH at most, so that a
    first pass over a large store does not hold up the dispatcher's tick for long."""
    return collect_garbage(store, retention_days * SECONDS_PER_UNIT["d"], limit=BATCH)


def parse_age(text: str, argument: str = "finished_before") -> float:
    """Seconds in an age such as 30d, 12h, 90m, 45s or 2w."""
    match = AGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{argument}: must be a number and a unit (s, m, h, d or w) such as 30d, 12h, "
            f"90m, 45s or 2w, got {text!r}"
        )
    return float(match[1]) * SECONDS_PER_UNIT[match[2]]
