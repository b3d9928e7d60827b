"""What a run leaves behind, off Redis and bounded: images in the runs' storage behind a small
index entry, metrics, logs and events capped by bytes, and a Redis at its maxmemory that refuses
what can wait and still takes leases and final states. Real redis-server, real files."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
import redis
from PIL import Image as PILImage

from jobs.keys import ENTRY_CHARS_KEPT, EVENT_BYTES_KEPT, LOG_BYTES_KEPT, METRIC_BYTES_KEPT, Keys
from jobs.messages import Image, Log, Metrics
from jobs.queue import Backoff, JobQueue
from jobs.records import JobNotFound, JobStatus, Lease, LeaseLost
from jobs.run_storage import ImageUnreadable, RunStorage
from jobs.spec import JobSpec
from jobs.store import JobStore, NoStorage, RedisMemory, StoredImage
from tests.redis_fixtures import RedisProcess

ROW = {f"metric_{number}": 0.25 for number in range(70)}  # about 1 KB of JSON
SPEC = JobSpec.model_validate({"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}})


def png(seed: int, side: int = 64) -> bytes:
    buffer = BytesIO()
    PILImage.frombytes("L", (side, side), bytes((seed * 7 + i) % 256 for i in range(side**2))).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def fill_up(client: redis.Redis, filler: str) -> None:
    """Redis at its maxmemory: 24 MiB of filler over a limit 6 MiB above what was used, sent
    1 MiB at a time, so that Redis's own buffers, which grow with the largest command a
    client sent, decide nothing."""
    limit = int(client.info("memory")["used_memory"]) + 6 * 2**20
    for _ in range(24):
        client.append(filler, b"f" * 2**20)
    client.config_set("maxmemory", limit)


def running_job(queue: JobQueue) -> tuple[str, Lease]:
    job_id = queue.submit(SPEC)
    return job_id, queue.claim("host-1", lease_seconds=30).lease


@pytest.fixture
def storage(tmp_path: Path) -> RunStorage:
    return RunStorage(str(tmp_path / "storage"))


@pytest.fixture
def stack(redis_client: redis.Redis, storage: RunStorage) -> tuple[JobQueue, JobStore]:
    return JobQueue(redis_client, "art"), JobStore(redis_client, "art", storage)


def test_a_runs_images_lie_in_storage_and_redis_keeps_only_their_index(
    stack: tuple[JobQueue, JobStore], storage: RunStorage, tmp_path: Path
) -> None:
    queue, store = stack
    job_id, lease = running_job(queue)
    grids = {epoch: png(epoch) for epoch in (1, 2)}
    store.write_for_run(lease, [Image("samples", epoch, grid) for epoch, grid in grids.items()])
    store.write_for_run(lease, [Image("samples", 1, png(9), trial="t_0001")])

    raw = store.redis.hget(store.keys.images(job_id), "samples:2")
    entry = StoredImage.from_json(raw)
    assert len(raw) < 400  # the index entry, not the PNG
    assert (entry.name, entry.epoch, entry.trial, entry.bytes) == (
        "samples",
        2,
        None,
        len(grids[2]),
    )
    assert entry.sha256 == hashlib.sha256(grids[2]).hexdigest()
    assert (tmp_path / "storage" / entry.path).read_bytes() == grids[2]
    assert entry.path.startswith(f"{job_id}/images/job/")
    assert [store.get_image(job_id, "samples", epoch) for epoch in (1, 2)] == [grids[1], grids[2]]
    assert store.get_image(job_id, "samples", 1, trial="t_0001") == png(9)
    trial_entry = StoredImage.from_json(
        store.redis.hget(store.keys.images(job_id, "t_0001"), "samples:1")
    )
    assert trial_entry.path.startswith(f"{job_id}/images/trial-t_0001/")


def test_a_missing_or_damaged_file_is_a_clear_error_naming_it(
    stack: tuple[JobQueue, JobStore], tmp_path: Path, redis_client: redis.Redis
) -> None:
    queue, store = stack
    job_id = queue.submit(SPEC)
    for epoch in (1, 2):
        store.put_image(job_id, "samples", epoch, png(epoch))
    paths = {
        epoch: StoredImage.from_json(
            redis_client.hget(store.keys.images(job_id), f"samples:{epoch}")
        ).path
        for epoch in (1, 2)
    }
    (tmp_path / "storage" / paths[1]).unlink()
    (tmp_path / "storage" / paths[2]).write_bytes(png(3))
    fresh = JobStore(redis_client, "art", RunStorage(str(tmp_path / "storage")))  # no cache

    with pytest.raises(ImageUnreadable, match=f"{paths[1]}: cannot be read"):
        fresh.get_image(job_id, "samples", 1)
    with pytest.raises(ImageUnreadable, match=f"{paths[2]}: damaged"):
        fresh.get_image(job_id, "samples", 2)
    with pytest.raises(NoStorage, match=paths[1]):
        JobStore(redis_client, "art").get_image(job_id, "samples", 1)


def test_images_from_an_older_store_are_still_read_from_redis(
    stack: tuple[JobQueue, JobStore], redis_client: redis.Redis
) -> None:
    queue, store = stack
    job_id = queue.submit(SPEC)
    redis_client.hset(store.keys.images(job_id), "samples:4", png(4))  # as stores used to

    assert store.get_image(job_id, "samples", 4) == png(4)
    assert [ref.epoch for ref in store.list_images(job_id)] == [4]


def test_a_refused_write_leaves_its_image_file_unseen_and_indexes_nothing(
    stack: tuple[JobQueue, JobStore], tmp_path: Path
) -> None:
    queue, store = stack
    job_id = queue.submit(SPEC)
    old = queue.claim("host-1", lease_seconds=30).lease
    queue.release(old, "handed back")
    new = queue.claim("host-2", lease_seconds=30).lease
    store.write_for_run(new, [Image("samples", 1, png(1))])

    with pytest.raises(LeaseLost):
        store.write_for_run(old, [Image("samples", 1, png(2)), Metrics({"epoch": 1})])

    assert store.get_image(job_id, "samples", 1) == png(1)
    assert store.metrics(job_id) == []
    # The refused copy's file lies in the job's folder, where a delete finds it.
    files = sorted(path.name for path in (tmp_path / "storage" / job_id).rglob("*.png"))
    assert len(files) == 2


def test_writes_outside_a_run_for_a_job_that_is_gone_raise_and_leave_no_key(
    stack: tuple[JobQueue, JobStore], redis_client: redis.Redis
) -> None:
    _, store = stack
    writes: list[Callable[[], None]] = [
        lambda: store.append_metrics("gone", {"epoch": 1}, trial="t_1"),
        lambda: store.append_log("gone", "late"),
        lambda: store.put_image("gone", "samples", 1, png(1)),
        lambda: store.add_checkpoint("gone", 1, "/storage/gone/epoch-1"),
        lambda: store.put_trial("gone", "t_1", {"status": "RUNNING"}),
    ]
    for write in writes:
        with pytest.raises(JobNotFound):
            write()
    assert list(redis_client.scan_iter("art:*")) == []


@pytest.mark.parametrize(
    ("make", "cap", "name", "read"),
    [
        (lambda i: Log("x" * 1000 + str(i)), LOG_BYTES_KEPT, "logs", "logs"),
        (lambda i: Metrics(ROW | {"epoch": i}), METRIC_BYTES_KEPT, "metrics:", "rows"),
    ],
)
def test_logs_and_metrics_are_capped_by_bytes_oldest_first_and_the_drop_is_counted(
    stack: tuple[JobQueue, JobStore],
    make: Callable[[int], Log | Metrics],
    cap: int,
    name: str,
    read: str,
) -> None:
    queue, store = stack
    job_id, lease = running_job(queue)
    count = 2 * cap // 1000
    for start in range(1, count + 1, 100):
        store.write_for_run(lease, [make(i) for i in range(start, min(start + 100, count + 1))])

    kept = store.logs(job_id, tail=count) if read == "logs" else store.metrics(job_id)
    footprint = store.redis.hgetall(store.keys.footprint(job_id))
    held = int(footprint[f"{name}:bytes".encode()])
    dropped = int(footprint[f"{name}:dropped".encode()])
    assert held <= cap
    assert dropped + len(kept) == count
    assert held == sum(len(line) for line in store.redis.lrange(
        store.keys.logs(job_id) if read == "logs" else store.keys.metrics(job_id), 0, -1
    ))  # fmt: skip
    newest = kept[-1] if read == "logs" else kept[-1]["epoch"]
    assert newest == (make(count).line if read == "logs" else count)  # type: ignore[union-attr]


def test_a_resumed_run_rewinds_its_curve_and_the_bytes_held_follow(
    stack: tuple[JobQueue, JobStore],
) -> None:
    queue, store = stack
    job_id, lease = running_job(queue)
    store.write_for_run(lease, [Metrics({"epoch": epoch}) for epoch in (1, 2, 3)])
    store.write_for_run(lease, [Metrics({"epoch": 2, "again": 1})])

    rows = store.metrics(job_id)
    assert rows == [{"epoch": 1}, {"epoch": 2, "again": 1}]
    held = int(store.redis.hget(store.keys.footprint(job_id), "metrics::bytes"))
    assert held == sum(len(raw) for raw in store.redis.lrange(store.keys.metrics(job_id), 0, -1))


def test_a_long_history_of_events_is_capped(stack: tuple[JobQueue, JobStore]) -> None:
    queue, store = stack
    job_id = queue.submit(SPEC)
    for number in range(2 * EVENT_BYTES_KEPT // 100):
        store.append_event(job_id, f"note {number} " + "z" * 80)

    held = int(store.redis.hget(store.keys.footprint(job_id), "events:bytes"))
    assert held <= EVENT_BYTES_KEPT
    assert store.events(job_id)[-1].message.startswith(f"note {2 * EVENT_BYTES_KEPT // 100 - 1} ")


def test_a_full_redis_refuses_run_writes_whole_and_still_keeps_leases_and_final_states(
    redis_process: Callable[..., RedisProcess], storage: RunStorage
) -> None:
    client = redis_process().client()
    queue, store = JobQueue(client, "full"), JobStore(client, "full", storage)
    job_id, lease = running_job(queue)
    store.write_for_run(lease, [Metrics({"epoch": 1}), Log("epoch 1")])
    fill_up(client, "full:filler")
    before = {key: client.dump(key) for key in client.scan_iter("full:*") if b"filler" not in key}

    assert store.memory().full
    for batch in ([Metrics({"epoch": 2})], [Metrics({"epoch": 2}), Log("epoch 2")]):
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            store.write_for_run(lease, batch)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        queue.submit(SPEC)
    after = {key: client.dump(key) for key in client.scan_iter("full:*") if b"filler" not in key}
    assert after == before  # nothing half written
    queue.renew_lease(lease, 30)
    store.put_dispatcher_status("host-1", {"redis_full_since": 1.0}, ttl_seconds=30)
    assert store.cluster_status()["redis_full_since"] == 1.0

    client.delete("full:filler")  # space freed: what waited lands, then the final state
    store.write_for_run(lease, [Metrics({"epoch": 2}), Log("epoch 2")])
    assert queue.complete(lease, {}) is JobStatus.SUCCEEDED
    assert [row["epoch"] for row in store.metrics(job_id)] == [1, 2]
    assert not store.memory().full


def test_a_full_redis_still_ends_a_run(
    redis_process: Callable[..., RedisProcess], storage: RunStorage
) -> None:
    client = redis_process().client()
    queue = JobQueue(client, "full")
    job_id, lease = running_job(queue)
    fill_up(client, "full:filler")

    assert queue.fail(lease, "RuntimeError: boom", retryable=False) is JobStatus.FAILED
    assert JobStore(client, "full", storage).get(job_id).status is JobStatus.FAILED


def test_memory_describes_itself() -> None:
    assert RedisMemory(312 * 2**20, 2**30).describe() == "312.0 MiB of 1.0 GiB (30%)"
    assert RedisMemory(2048, 0).describe() == "2.0 KiB (no maxmemory)"
    assert RedisMemory(2**30, 2**30).full and not RedisMemory(2**30, 0).full


def test_keys_of_the_footprint_live_under_the_prefix() -> None:
    keys = Keys("p")
    assert keys.footprint("j") == "p:footprint:j"
    assert keys.artifact_trials("j") == "p:artifact_trials:j"


def test_a_full_redis_refuses_a_claim_whole_even_with_a_retry_falling_due(
    redis_process: Callable[..., RedisProcess],
) -> None:
    client = redis_process().client()
    queue = JobQueue(client, "full", backoff=Backoff(base_seconds=0.01, cap_seconds=0.01))
    job_id = queue.submit(SPEC)
    queue.fail(queue.claim("host-1", lease_seconds=30).lease, "RuntimeError: flaky")
    time.sleep(0.05)  # the retry's backoff is over: the claim would promote it first
    fill_up(client, "full:filler")
    before = {key: client.dump(key) for key in client.scan_iter("full:*") if b"filler" not in key}

    with pytest.raises(redis.exceptions.OutOfMemoryError):
        queue.claim("host-2", lease_seconds=30)

    after = {key: client.dump(key) for key in client.scan_iter("full:*") if b"filler" not in key}
    assert after == before
    client.delete("full:filler")
    assert queue.claim("host-2", lease_seconds=30).job_id == job_id


def test_one_huge_log_line_is_clipped_instead_of_pushing_out_the_rest(
    stack: tuple[JobQueue, JobStore],
) -> None:
    queue, store = stack
    job_id, lease = running_job(queue)
    store.write_for_run(lease, [Log(f"line {number}") for number in range(100)])
    store.write_for_run(lease, [Log("x" * 4 * LOG_BYTES_KEPT)])

    lines = store.logs(job_id, tail=1000)
    assert len(lines) == 101 and lines[0] == "line 0"
    assert lines[-1].endswith(
        f"[... {4 * LOG_BYTES_KEPT - ENTRY_CHARS_KEPT} more characters dropped]"
    )


def test_an_index_entry_pointing_out_of_its_jobs_folder_is_not_read(
    stack: tuple[JobQueue, JobStore], redis_client: redis.Redis, tmp_path: Path
) -> None:
    queue, store = stack
    job_id, other = queue.submit(SPEC), queue.submit(SPEC)
    store.put_image(other, "samples", 1, png(1))
    theirs = StoredImage.from_json(redis_client.hget(store.keys.images(other), "samples:1"))
    for path in (theirs.path, f"{job_id}/../{theirs.path}"):
        forged = StoredImage("samples", 1, None, path, theirs.bytes, theirs.sha256)
        redis_client.hset(store.keys.images(job_id), "samples:1", forged.to_json())
        with pytest.raises(ImageUnreadable, match="not in job"):
            store.get_image(job_id, "samples", 1)
    with pytest.raises(ValueError, match="job id"):
        store.stored_image("../escape", Image("samples", 1, png(1)))


def test_a_file_already_stored_is_not_written_again(storage: RunStorage, tmp_path: Path) -> None:
    first = storage.write("job/images/job/a.png", png(1))
    target = tmp_path / "storage" / "job" / "images" / "job" / "a.png"
    written_at = target.stat().st_mtime_ns

    again = storage.write("job/images/job/a.png", png(1))

    assert again == first and target.stat().st_mtime_ns == written_at
    assert [path.name for path in target.parent.iterdir()] == ["a.png"]  # no partial file left


def test_a_list_from_before_the_caps_is_counted_once_then_capped(
    stack: tuple[JobQueue, JobStore], redis_client: redis.Redis
) -> None:
    queue, store = stack
    job_id = queue.submit(SPEC)
    legacy = [f"old line {number}".encode() for number in range(50)]
    redis_client.rpush(store.keys.logs(job_id), *legacy)  # as a store before the caps left it
    store.append_log(job_id, "new line")

    held = int(redis_client.hget(store.keys.footprint(job_id), "logs:bytes"))
    assert held == sum(map(len, legacy)) + len("new line")


def test_a_full_redis_still_lists_jobs_by_several_filters(
    redis_process: Callable[..., RedisProcess], storage: RunStorage
) -> None:
    client = redis_process().client()
    queue, store = JobQueue(client, "full"), JobStore(client, "full", storage)
    job_ids = [queue.submit(SPEC) for _ in range(5)]
    expected = store.list_jobs(status="queued", model="pixelcnn", offset=1, limit=3)
    fill_up(client, "full:filler")

    listed = store.list_jobs(status="queued", model="pixelcnn", offset=1, limit=3)

    assert [record.id for record in listed.records] == [job_ids[3], job_ids[2], job_ids[1]]
    assert (listed.total, listed.records) == (expected.total, expected.records)
