"""`migrate_images`: PNGs that older stores kept in Redis move into the runs' storage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import redis

from jobs.deletion import delete_jobs
from jobs.lua_scripts import load_script
from jobs.migration import MigrationReport, migrate_images
from jobs.queue import JobQueue
from jobs.run_storage import RunStorage, image_path
from jobs.store import ImageRef, JobStore, StoredImage
from tests.redis_fixtures import RedisProcess
from tests.test_artifacts import fill_up
from tests.test_store import make_spec

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def legacy_image(
    store: JobStore, job_id: str, field: str, png: bytes, trial: str | None = None
) -> None:
    """An image as stores before the runs' storage kept it: the PNG in the hash itself."""
    store.redis.hset(store.keys.images(job_id, trial), field, png)


def test_legacy_images_show_before_and_after_they_move_into_storage(
    redis_client: redis.Redis, store: JobStore, tmp_path: Path
) -> None:
    queue = JobQueue(redis_client)
    sweep = queue.submit(make_spec(kind="sweep"))
    store.put_trial(sweep, "t_0", {"status": "completed"})
    legacy_image(store, sweep, "samples:1", PNG + b"job")
    legacy_image(store, sweep, "samples:1", PNG + b"trial", trial="t_0")
    store.put_image(sweep, "samples", 2, PNG + b"new")  # an index entry already
    untouched = queue.submit(make_spec())
    assert store.get_image(sweep, "samples", 1) == PNG + b"job"
    assert store.get_image(sweep, "samples", 1, trial="t_0") == PNG + b"trial"

    assert migrate_images(store) == MigrationReport(
        moved=2, jobs=1, trials_indexed=0, keys_removed=0
    )

    for trial, png in ((None, PNG + b"job"), ("t_0", PNG + b"trial")):
        entry = StoredImage.from_json(
            store.redis.hget(store.keys.images(sweep, trial), "samples:1")
        )
        path = image_path(sweep, trial, "samples", 1, hashlib.sha256(png).hexdigest())
        assert (entry.path, entry.trial, entry.bytes) == (path, trial, len(png))
        assert (tmp_path / "storage" / path).read_bytes() == png
        assert store.get_image(sweep, "samples", 1, trial=trial) == png
    assert store.list_images(sweep) == [ImageRef("samples", 1), ImageRef("samples", 2)]
    assert store.get_image(sweep, "samples", 2) == PNG + b"new"
    assert store.list_images(untouched) == []


def test_a_second_migration_moves_nothing(redis_client: redis.Redis, store: JobStore) -> None:
    job_id = JobQueue(redis_client).submit(make_spec())
    legacy_image(store, job_id, "samples:3", PNG)
    assert migrate_images(store) == MigrationReport(
        moved=1, jobs=1, trials_indexed=0, keys_removed=0
    )
    moved_entry = store.redis.hget(store.keys.images(job_id), "samples:3")

    assert migrate_images(store) == MigrationReport(
        moved=0, jobs=0, trials_indexed=0, keys_removed=0
    )

    assert store.redis.hget(store.keys.images(job_id), "samples:3") == moved_entry
    assert store.get_image(job_id, "samples", 3) == PNG


def test_a_field_changed_since_it_was_read_keeps_its_new_value(
    redis_client: redis.Redis, store: JobStore
) -> None:
    job_id = JobQueue(redis_client).submit(make_spec())
    legacy_image(store, job_id, "samples:1", PNG + b"rewritten")
    swap = load_script(store.redis, store.keys, "migrate_image")
    read_before = hashlib.sha1(PNG + b"first").hexdigest()  # what the migration had read
    entry = json.dumps({"path": "elsewhere"})

    assert swap(args=[job_id, "", "samples:1", read_before, entry]) == 0
    assert swap(args=[job_id, "", "samples:2", read_before, entry]) == 0  # deleted since

    assert store.redis.hgetall(store.keys.images(job_id)) == {b"samples:1": PNG + b"rewritten"}


def finished_sweep(queue: JobQueue) -> str:
    sweep = queue.submit(make_spec(kind="sweep"))
    claimed = queue.claim("test-worker", lease_seconds=60)
    assert claimed is not None and claimed.job_id == sweep
    queue.complete(claimed.lease, {})
    return sweep


def test_trials_that_only_wrote_artifacts_are_indexed_and_go_with_their_sweep(
    redis_client: redis.Redis, store: JobStore
) -> None:
    queue = JobQueue(redis_client)
    sweep = finished_sweep(queue)
    # As older stores left trials that crashed before their first row: artifacts, no index.
    redis_client.rpush(store.keys.metrics(sweep, "t_7"), json.dumps({"epoch": 1}))
    legacy_image(store, sweep, "samples:1", PNG, trial="t_7")
    legacy_image(store, sweep, "samples:1", PNG + b"8", trial="t_8")  # an image only
    gone = queue.submit(make_spec())  # a record removed by hand: its trial keys are garbage
    redis_client.delete(store.keys.job(gone))
    redis_client.rpush(store.keys.metrics(gone, "t_1"), json.dumps({"epoch": 1}))

    report = migrate_images(store)

    assert report == MigrationReport(moved=2, jobs=1, trials_indexed=2, keys_removed=1)
    assert store.trial_ids(sweep) == ["t_7", "t_8"]
    assert not redis_client.exists(store.keys.metrics(gone, "t_1"))
    assert not redis_client.exists(store.keys.artifact_trials(gone))
    (deleted,) = delete_jobs(store, [sweep])
    assert deleted.trials == ("t_7", "t_8")
    assert list(redis_client.scan_iter(match=f"*{sweep}*")) == []


def test_a_migration_on_a_full_redis_still_indexes_and_moves_images(
    redis_process: Callable[..., RedisProcess], tmp_path: Path
) -> None:
    client = redis_process().client()
    store = JobStore(client, storage=RunStorage(str(tmp_path / "storage")))
    sweep = finished_sweep(JobQueue(client))
    legacy_image(store, sweep, "samples:1", PNG, trial="t_0")
    fill_up(client, "filler")
    assert store.memory().full

    assert migrate_images(store) == MigrationReport(
        moved=1, jobs=1, trials_indexed=1, keys_removed=0
    )
    assert store.get_image(sweep, "samples", 1, trial="t_0") == PNG
