"""`genfleet migrate`: moves the PNGs that stores from before the runs' storage kept in Redis
into storage, leaving in each images hash the index entry that new writes leave.

Each PNG is written to storage first and its field swapped by `migrate_image.lua` only while
it still holds the bytes that were read, so a field a run rewrote meanwhile keeps the newer
entry. Images not yet moved still show (`JobStore.get_image` serves either form), and a second
run finds nothing to move.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from jobs.messages import Image
from jobs.queue import LuaScript, load_script
from jobs.store import PNG_SIGNATURE, JobStore


@dataclass(frozen=True)
class MigrationReport:
    moved: int  # images moved from Redis into storage
    jobs: int  # jobs that had any


def migrate_images(store: JobStore) -> MigrationReport:
    swap = load_script(store.redis, store.keys, "migrate_image")
    moved = jobs = 0
    for job_id in store.job_ids():
        count = sum(
            _migrate_hash(store, swap, job_id, trial) for trial in (None, *store.trial_ids(job_id))
        )
        moved += count
        jobs += count > 0
    return MigrationReport(moved, jobs)


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
