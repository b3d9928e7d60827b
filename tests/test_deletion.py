"""Deleting jobs by hand, by age and by retention, against a real redis-server and storage:
every trace of the deleted jobs goes, from Redis and the runs' storage, and nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from jobs import deletion
from jobs.deletion import (
    Deleted,
    NotDeletable,
    apply_retention,
    collect_garbage,
    delete_jobs,
    finish_deletes,
    parse_age,
    server_time,
)
from jobs.lua_scripts import load_script
from jobs.messages import Checkpoint as CheckpointMessage
from jobs.messages import Image, Log, Message, Metrics, TrialUpdate
from jobs.queue import JobQueue
from jobs.records import JobNotFound, JobStatus, Lease, LeaseLost
from jobs.run_storage import RunStorage
from jobs.spec import JobSpec
from jobs.store import JobStore
from tests.redis_fixtures import RedisProcess

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
WORKER = "test-worker"
ENDINGS = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD)
MEMORY_SLACK_BYTES = 4 * 2**10


def make_spec(kind: str = "train", model: str = "pixelcnn") -> JobSpec:
    data = {
        "model": {"type": model},
        "data": {"dataset": "digits"},
        "kind": kind,
        "max_attempts": 1,  # a retryable failure ends the job dead
    }
    if kind == "sweep":
        data["sweep"] = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    return JobSpec.model_validate(data)


def run_messages(job_id: str, trials: tuple[str, ...]) -> list[Message]:
    """Every kind of artifact a run writes, for the job and for each of its trials."""
    messages: list[Message] = [
        Metrics({"epoch": 1, "val_bits_per_dim": 2.5}),
        Log("epoch 1 done"),
        Image("samples", 1, PNG),
        CheckpointMessage(1, f"{job_id}/claim-1/checkpoint_000001"),
    ]
    for trial in trials:
        messages += [
            TrialUpdate(trial, {"status": "completed", "metric": 2.4}),
            Metrics({"epoch": 1, "val_bits_per_dim": 2.4}, trial=trial),
            Image("samples", 1, PNG + trial.encode(), trial=trial),
        ]
    return messages


def start(queue: JobQueue, store: JobStore, trials: tuple[str, ...] = ()) -> Lease:
    """A running job that wrote artifacts and, as Ray does, its run and trial folders."""
    job_id = queue.submit(make_spec("sweep" if trials else "train"))
    claimed = queue.claim(WORKER, lease_seconds=600)
    assert claimed is not None and claimed.job_id == job_id
    store.write_for_run(claimed.lease, run_messages(job_id, trials))
    assert store.storage is not None
    store.storage.write(f"{job_id}/claim-1/checkpoint_000001/state.pt", b"state")
    for trial in trials:
        store.storage.write(f"{job_id}-{trial}/claim-1/result.json", b"{}")
    return claimed.lease


def end(queue: JobQueue, lease: Lease, status: JobStatus) -> None:
    if status is JobStatus.SUCCEEDED:
        queue.complete(lease, {})
    elif status is JobStatus.FAILED:
        queue.fail(lease, "ValueError: boom", retryable=False)
    elif status is JobStatus.DEAD:
        queue.fail(lease, "RuntimeError: flaky")
    else:
        queue.cancel(lease.job_id)
        queue.mark_cancelled(lease)
    assert queue.redis.hget(queue.keys.job(lease.job_id), "status") == status.encode()


def finished(
    queue: JobQueue, store: JobStore, status: JobStatus, trials: tuple[str, ...] = ()
) -> str:
    lease = start(queue, store, trials)
    end(queue, lease, status)
    return lease.job_id


def keys_of(client: redis.Redis, job_id: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"*{job_id}*"))


def folders(store: JobStore, *job_ids: str) -> dict[str, list[str]]:
    assert store.storage is not None
    return store.storage.folders_of(set(job_ids))


# -- 1,000 jobs: Redis back to its baseline ---------------------------------------------------


def memory(client: redis.Redis) -> tuple[int, int, set[bytes]]:
    """used_memory, the summed MEMORY USAGE of every key, and the keys."""
    keys = set(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return int(client.info("memory")["used_memory"]), sum(pipe.execute()), keys


def settled_used_memory(client: redis.Redis, at_most: int) -> int:
    """used_memory once Redis's cron has shrunk the keyspace's hash tables (10 times a
    second), or after 5 s."""
    deadline = time.monotonic() + 5
    while (used := int(client.info("memory")["used_memory"])) > at_most:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return used


def test_gc_of_1000_finished_jobs_brings_redis_back_to_its_baseline(
    redis_process: Callable[..., RedisProcess], tmp_path: Path
) -> None:
    client = redis_process().client()
    # Redis's own bookkeeping, bounded and not the jobs' memory, off: the latency histogram it
    # makes the first time each command runs, and the log of slow commands.
    client.config_set("latency-tracking", "no")
    client.config_set("slowlog-log-slower-than", -1)
    queue = JobQueue(client)
    store = JobStore(client, storage=RunStorage(str(tmp_path / "storage")))
    running = start(queue, store)
    queued = queue.submit(make_spec(), priority=0)  # below every job claimed after it
    kept_sweep = finished(queue, store, JobStatus.SUCCEEDED, trials=("t_0", "t_1"))
    # One job through every script first, so that the script cache is in the baseline.
    warm_up = [finished(queue, store, status) for status in ENDINGS]
    assert sorted(collect_garbage(store, 0, statuses=["failed", "cancelled", "dead"])) == sorted(
        warm_up
    )
    kept = {job_id: store.get(job_id) for job_id in (running.job_id, queued, kept_sweep)}
    used_before, usage_before, keys_before = memory(client)

    doomed = [
        finished(queue, store, ENDINGS[n % 3], trials=("t_0", "t_1") if n % 10 == 0 else ())
        for n in range(1000)
    ]
    grown, _, _ = memory(client)
    deleted = collect_garbage(store, 0, statuses=["failed", "cancelled", "dead"])

    used_after = settled_used_memory(client, used_before + MEMORY_SLACK_BYTES)
    _, usage_after, keys_after = memory(client)
    print(
        f"used_memory: {used_before} before, {grown} with 1,000 jobs, {used_after} after; "
        f"keys' MEMORY USAGE: {usage_before} before, {usage_after} after"
    )
    assert sorted(deleted) == sorted(doomed)
    assert keys_after == keys_before
    assert abs(usage_after - usage_before) <= MEMORY_SLACK_BYTES
    assert used_after - used_before <= MEMORY_SLACK_BYTES
    assert client.object("encoding", store.keys.all_jobs) in (b"listpack", b"ziplist")
    assert all(not found for found in folders(store, *doomed).values())
    assert {job_id: store.get(job_id) for job_id in kept} == kept
    assert store.get_image(running.job_id, "samples", 1) == PNG
    assert store.get_image(kept_sweep, "samples", 1, trial="t_1") == PNG + b"t_1"
    assert folders(store, kept_sweep)[kept_sweep] == [
        kept_sweep,
        f"{kept_sweep}-t_0",
        f"{kept_sweep}-t_1",
    ]


# -- delete ------------------------------------------------------------------------------------


def test_deleting_a_sweep_removes_its_keys_and_every_trials_folder(
    queue: JobQueue, store: JobStore
) -> None:
    other = finished(queue, store, JobStatus.SUCCEEDED, trials=("t_0",))
    lease = start(queue, store, trials=("t_0", "t_1"))
    # A trial that wrote metrics before its first trial update is known by its artifacts only.
    store.write_for_run(lease, [Metrics({"epoch": 1}, trial="t_2")])
    end(queue, lease, JobStatus.SUCCEEDED)
    sweep = lease.job_id
    assert store.storage is not None
    store.storage.write(f"{sweep}-t_2/claim-1/result.json", b"{}")

    deleted = delete_jobs(store, [sweep])

    folders_removed = (sweep, f"{sweep}-t_0", f"{sweep}-t_1", f"{sweep}-t_2")
    assert deleted == [Deleted(sweep, ("t_0", "t_1", "t_2"), folders_removed)]
    assert keys_of(store.redis, sweep) == []
    assert folders(store, sweep, other) == {sweep: [], other: [other, f"{other}-t_0"]}
    assert store.trials(other)[0]["trial_id"] == "t_0"
    with pytest.raises(JobNotFound):
        store.get(sweep)
    assert store.list_jobs().total == 1


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_a_queued_or_running_job_is_refused_and_nothing_in_the_batch_is_removed(
    queue: JobQueue, store: JobStore, status: JobStatus
) -> None:
    done = finished(queue, store, JobStatus.SUCCEEDED)
    active = (
        start(queue, store).job_id if status is JobStatus.RUNNING else queue.submit(make_spec())
    )
    before = {job_id: keys_of(store.redis, job_id) for job_id in (done, active)}

    with pytest.raises(NotDeletable) as refused:
        delete_jobs(store, [done, active])

    assert (
        str(refused.value)
        == f"job {active} is {status}: cancel it first (genfleet cancel {active})"
    )
    assert {job_id: keys_of(store.redis, job_id) for job_id in (done, active)} == before
    assert folders(store, done)[done] == [done]
    assert store.get_image(done, "samples", 1) == PNG


def test_a_job_retried_after_the_check_is_kept_and_the_error_names_the_ones_deleted(
    queue: JobQueue, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, retried, last = (finished(queue, store, JobStatus.FAILED) for _ in range(3))
    finish_stopped = deletion.finish_deletes

    def retry_between_check_and_delete(given: JobStore) -> list[str]:
        queue.retry(retried)  # as a user retrying it in the dashboard meanwhile
        return finish_stopped(given)

    monkeypatch.setattr(deletion, "finish_deletes", retry_between_check_and_delete)
    with pytest.raises(NotDeletable) as refused:
        delete_jobs(store, [first, retried, last])

    assert [entry.job_id for entry in refused.value.deleted] == [first, last]
    assert str(refused.value).endswith("; 2 job(s) of the batch were deleted")
    assert store.get(retried).status is JobStatus.QUEUED
    assert folders(store, first, retried, last) == {first: [], retried: [retried], last: []}
    for job_id in (first, last):
        with pytest.raises(JobNotFound):
            store.get(job_id)


def test_an_unknown_job_in_the_batch_deletes_none(queue: JobQueue, store: JobStore) -> None:
    done = finished(queue, store, JobStatus.FAILED)

    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        delete_jobs(store, [done, "nope"])

    assert store.get(done).status is JobStatus.FAILED
    assert folders(store, done)[done] == [done]


def test_a_dispatcher_writing_on_through_the_end_and_the_delete_lands_nothing(
    queue: JobQueue, store: JobStore
) -> None:
    lease = start(queue, store, trials=("t_0",))
    refusals: list[Exception] = []

    def write_on() -> None:
        while True:
            batch = [Metrics({"epoch": 2}), Log("late"), TrialUpdate("t_1", {"status": "running"})]
            try:
                store.write_for_run(lease, batch)
            except (LeaseLost, JobNotFound) as exc:
                refusals.append(exc)
                if isinstance(exc, JobNotFound):
                    return

    writer = threading.Thread(target=write_on)
    writer.start()
    end(queue, lease, JobStatus.CANCELLED)
    delete_jobs(store, [lease.job_id])
    writer.join(timeout=30)

    assert not writer.is_alive()
    assert isinstance(refusals[-1], JobNotFound)
    assert keys_of(store.redis, lease.job_id) == []
    assert store.redis.zcard(store.keys.deleted) == 0


def test_a_late_write_with_the_old_lease_after_the_delete_is_refused_and_creates_no_key(
    queue: JobQueue, store: JobStore
) -> None:
    lease = start(queue, store)
    end(queue, lease, JobStatus.SUCCEEDED)
    delete_jobs(store, [lease.job_id])

    with pytest.raises(JobNotFound):
        store.write_for_run(lease, [*run_messages(lease.job_id, ("t_0",)), Log("late")])

    assert keys_of(store.redis, lease.job_id) == []
    assert store.list_images(lease.job_id) == []
    assert folders(store, lease.job_id) == {lease.job_id: []}  # not even an empty folder


def test_a_write_refused_for_a_record_lost_with_redis_keeps_the_runs_checkpoints(
    queue: JobQueue, store: JobStore, tmp_path: Path
) -> None:
    lease = start(queue, store)  # wrote an image and a checkpoint file
    store.redis.delete(store.keys.job(lease.job_id))  # as a Redis that lost its last writes

    with pytest.raises(JobNotFound):
        store.write_for_run(lease, [Image("samples", 2, PNG + b"late")])

    job_folder = tmp_path / "storage" / lease.job_id
    assert (job_folder / "claim-1" / "checkpoint_000001" / "state.pt").read_bytes() == b"state"
    late = list((job_folder / "images").rglob("samples-000002-*"))
    assert late == [] and (job_folder / "images" / "job").is_dir()  # epoch 1's grid is kept


@pytest.mark.parametrize(
    "write",
    [
        lambda store, job_id: store.put_image(job_id, "samples", 2, PNG),
        lambda store, job_id: store.put_image(job_id, "samples", 2, PNG, trial="t_0"),
        lambda store, job_id: store.append_metrics(job_id, {"epoch": 2}, trial="t_0"),
        lambda store, job_id: store.append_log(job_id, "late"),
        lambda store, job_id: store.add_checkpoint(job_id, 2, "s3://b/x"),
        lambda store, job_id: store.put_trial(job_id, "t_0", {"status": "running"}),
        lambda store, job_id: store.write_outside_run(job_id, [Log("late")]),
    ],
)
def test_writes_outside_a_run_after_the_delete_raise_and_create_no_key(
    queue: JobQueue, store: JobStore, write: Callable[[JobStore, str], None]
) -> None:
    job_id = finished(queue, store, JobStatus.SUCCEEDED)
    delete_jobs(store, [job_id])

    with pytest.raises(JobNotFound):
        write(store, job_id)

    assert keys_of(store.redis, job_id) == []
    assert folders(store, job_id) == {job_id: []}


def test_the_idempotency_key_of_a_deleted_job_can_be_used_again(
    queue: JobQueue, store: JobStore
) -> None:
    first = queue.submit(make_spec(), idempotency_key="nightly-1")
    queue.cancel(first)
    delete_jobs(store, [first])

    again = queue.submit(make_spec(model="vae"), idempotency_key="nightly-1")

    assert again != first
    assert store.get(again).model_type == "vae"
    assert queue.submit(make_spec(model="vae"), idempotency_key="nightly-1") == again


def test_finish_deletes_removes_the_folders_a_stopped_delete_left(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = finished(queue, store, JobStatus.SUCCEEDED, trials=("t_0",))
    other = finished(queue, store, JobStatus.SUCCEEDED)
    # The first step of a delete alone, as when `genfleet delete` is killed between the two.
    load_script(store.redis, store.keys, "delete_job")(args=[job_id])
    assert folders(store, job_id)[job_id] == [job_id, f"{job_id}-t_0"]

    assert finish_deletes(store) == []  # within the grace: maybe a delete still at work
    assert folders(store, job_id)[job_id] == [job_id, f"{job_id}-t_0"]
    assert finish_deletes(store, grace_seconds=0) == [job_id]

    assert folders(store, job_id, other) == {job_id: [], other: [other]}
    assert store.redis.exists(store.keys.deleted) == 0


# -- gc and retention ----------------------------------------------------------------------


def test_gc_deletes_only_jobs_that_finished_before_the_cutoff(
    queue: JobQueue, store: JobStore
) -> None:
    old = [finished(queue, store, status) for status in (JobStatus.SUCCEEDED, *ENDINGS)]
    between = server_time(store)
    recent = finished(queue, store, JobStatus.FAILED)
    active = start(queue, store).job_id

    deleted = collect_garbage(store, server_time(store) - between)

    assert sorted(deleted) == sorted(old)
    assert [record.id for record in store.list_jobs().records] == [active, recent]
    assert folders(store, *old, recent) == {**{job_id: [] for job_id in old}, recent: [recent]}


def test_gc_keeps_a_job_retried_and_finished_again_after_it_was_listed(
    queue: JobQueue, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, rerun = (finished(queue, store, JobStatus.FAILED) for _ in range(2))
    cutoff_age = 0.5
    time.sleep(cutoff_age + 0.1)
    finish_stopped = deletion.finish_deletes

    def rerun_between_listing_and_delete(given: JobStore) -> list[str]:
        queue.retry(rerun)
        claimed = queue.claim(WORKER, lease_seconds=60)
        assert claimed is not None and claimed.job_id == rerun
        queue.complete(claimed.lease, {})
        return finish_stopped(given)

    monkeypatch.setattr(deletion, "finish_deletes", rerun_between_listing_and_delete)
    deleted = collect_garbage(store, cutoff_age)

    assert deleted == [old]
    assert store.get(rerun).status is JobStatus.SUCCEEDED
    assert folders(store, rerun) == {rerun: [rerun]}


def test_gc_with_statuses_deletes_only_jobs_that_ended_so(queue: JobQueue, store: JobStore) -> None:
    by_status = {
        status: finished(queue, store, status) for status in (JobStatus.SUCCEEDED, *ENDINGS)
    }

    deleted = collect_garbage(store, 0, statuses=["failed", "cancelled"])

    assert sorted(deleted) == sorted([by_status[JobStatus.FAILED], by_status[JobStatus.CANCELLED]])
    kept = {record.status for record in store.list_jobs().records}
    assert kept == {JobStatus.SUCCEEDED, JobStatus.DEAD}


def test_gc_refuses_a_status_a_finished_job_cannot_have(store: JobStore) -> None:
    with pytest.raises(ValueError) as refused:
        collect_garbage(store, 0, statuses=["failed", "running"])

    assert str(refused.value) == (
        "statuses: must be among succeeded, failed, cancelled, dead, got 'running'"
    )


def test_gc_dry_run_lists_the_jobs_and_removes_nothing(queue: JobQueue, store: JobStore) -> None:
    job_ids = [finished(queue, store, status) for status in ENDINGS]
    before = {job_id: keys_of(store.redis, job_id) for job_id in job_ids}

    assert sorted(collect_garbage(store, 0, dry_run=True)) == sorted(job_ids)

    assert {job_id: keys_of(store.redis, job_id) for job_id in job_ids} == before
    assert folders(store, *job_ids) == {job_id: [job_id] for job_id in job_ids}


def test_retention_deletes_jobs_finished_longer_ago_and_finishes_stopped_deletes(
    queue: JobQueue, store: JobStore
) -> None:
    old = finished(queue, store, JobStatus.SUCCEEDED)
    stopped = finished(queue, store, JobStatus.FAILED)
    load_script(store.redis, store.keys, "delete_job")(args=[stopped])
    store.redis.zadd(store.keys.deleted, {stopped: server_time(store) - 7200})  # 2 h ago
    time.sleep(2.0)
    recent = finished(queue, store, JobStatus.SUCCEEDED)

    deleted = apply_retention(store, retention_days=1.0 / 86400)  # a second

    assert deleted == [old]
    assert [record.id for record in store.list_jobs().records] == [recent]
    assert folders(store, old, stopped, recent) == {old: [], stopped: [], recent: [recent]}
    assert store.redis.exists(store.keys.deleted) == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400),
     ("1.5d", 129600), ("0s", 0)],
)  # fmt: skip
def test_parse_age_reads_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["30", "d", "30x", "-1d", "", "30 days", "1e3s"])
def test_parse_age_names_the_argument_and_what_would_be_valid(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_age(text)

    assert str(refused.value) == (
        "finished_before: must be a number and a unit (s, m, h, d or w) such as 30d, 12h, "
        f"90m, 45s or 2w, got {text!r}"
    )
