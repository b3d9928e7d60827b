"""`genfleet migrate`: moves the PNGs that stores from before the runs' storage kept in Redis
into storage, leaving in each images hash the index entry that new writes leave.

It first indexes what those stores did not, from one scan of the keyspace: every sweep trial
with artifact keys goes into its job's `artifact_trials:<id>`, which `genfleet delete` and this
migration read to find a sweep's trials (stores before it listed only trials with a row), and
the trial artifact keys of jobs whose record is gone are removed.

Each PNG is written to storage first and its field swapped by `migrate_image.lua` only while
it still holds the bytes that were read, so a field a run rewrote meanwhile keeps the newer
entry. Images not yet moved still show (`JobStore.get_image` serves either form), and a second
run finds nothing to move.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from jobs.deletion import BATCH
from jobs.keys import TRIAL_INFIX
from jobs.lua_scripts import LuaScript, load_script
from jobs.messages import Image
from jobs.store import PNG_SIGNATURE, JobStore


@dataclass(frozen=True)
class MigrationReport:
    moved: int  # images moved from Redis into storage
    jobs: int  # jobs that had any
    trials_indexed: int  # sweep trials with artifacts that artifact_trials did not list
    keys_removed: int  # trial artifact keys of jobs whose record is gone


def migrate_images(store: JobStore) -> MigrationReport:
    trials_indexed, keys_removed = index_artifact_trials(store)
    swap = load_script(store.redis, store.keys, "migrate_image")
    moved = jobs = 0
    for job_id in store.job_ids():
        count = sum(
            _migrate_hash(store, swap, job_id, trial) for trial in (None, *store.trial_ids(job_id))
        )
        moved += count
        jobs += count > 0
    return MigrationReport(moved, jobs, trials_indexed, keys_removed)


def index_artifact_trials(store: JobStore) -> tuple[int, int]:
    """Index every trial that has a metrics or images key in its job's artifact_trials set,
    and remove such keys of jobs that no longer exist; returns (trials added, keys removed).
    Runs on a full Redis too (`index_trials.lua` is allowed when full)."""
    starts = (store.keys.metrics(""), store.keys.images(""))
    trials_by_job: dict[str, set[str]] = {}
    pattern = f"{store.keys.prefix}:*{TRIAL_INFIX}*"
    for raw in store.redis.scan_iter(match=pattern, count=1000):
        key = raw.decode()
        for start in starts:
            if key.startswith(start):
                job_id, _, trial = key.removeprefix(start).partition(TRIAL_INFIX)
                trials_by_job.setdefault(job_id, set()).add(trial)
    script = load_script(store.redis, store.keys, "index_trials")
    jobs = sorted(trials_by_job)
    added = removed = 0
    for first in range(0, len(jobs), BATCH):
        pipe = store.redis.pipeline(transaction=False)
        for job_id in jobs[first : first + BATCH]:
            script(args=[job_id, *sorted(trials_by_job[job_id])], client=pipe)
        for job_added, job_removed in pipe.execute():
            added += job_added
            removed += job_removed
    return added, removed


def _migrate_hash(store: JobStore, swap: LuaScript, job_id: str, trial: str | None) -> int:
    """Images of the job (or one trial) moved into storage."""
    moved = 0
    for field, value in store.redis.hscan_iter(store.keys.images(job_id, trial)):
        if not value.startswith(PNG_SIGNATURE):
            continue  # an index entry already
        name, _, epoch = field.decode().rpartition(":")
        # The same file and entry as a new write of this image.
        entry = store.stored_image(job_id, Image(name, int(epoch), value, trial=trial)).to_json()
        sha1 = hashlib.sha1(value).hexdigest()  # what redis.sha1hex gives for the same bytes
        moved += swap(args=[job_id, trial or "", field, sha1, entry])
    return moved
