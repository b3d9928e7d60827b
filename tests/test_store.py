"""The job store against a real redis-server: listings at scale, events and artifacts."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import pytest
import redis

from jobs.keys import LOG_LINES_KEPT
from jobs.queue import JobQueue
from jobs.records import JobNotFound, JobStatus
from jobs.spec import JobSpec
from jobs.store import Checkpoint, ImageNotFound, ImageRef, JobStore
from tests.redis_fixtures import RedisProcess

MODELS = ("pixelcnn", "vae", "dcgan", "gated_pixelcnn")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # a signature and arbitrary binary bytes


def make_spec(model: str = "pixelcnn", kind: str = "train") -> JobSpec:
    data = {"model": {"type": model}, "data": {"dataset": "digits"}, "kind": kind}
    if kind == "sweep":
        data["sweep"] = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    return JobSpec.model_validate(data)


@dataclass(frozen=True)
class Listed:
    job_id: str
    model: str
    kind: str
    status: JobStatus


@pytest.fixture(scope="module")
def fleet(redis_server: RedisProcess) -> tuple[JobStore, list[Listed]]:
    """3,000 jobs over four models and two kinds, some running, succeeded or cancelled.

    Lives in database 1, which the per-test flush of database 0 leaves alone.
    """
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=1)
    client.flushdb()
    queue = JobQueue(client)
    jobs = []
    for index in range(3000):
        model, kind = MODELS[index % 4], "sweep" if index % 10 == 0 else "train"
        jobs.append(Listed(queue.submit(make_spec(model, kind)), model, kind, JobStatus.QUEUED))
    by_id = {job.job_id: job for job in jobs}
    for claimed in range(600):
        job_id = queue.claim("worker", lease_seconds=600).job_id
        status = JobStatus.RUNNING
        if claimed % 2 == 0:
            queue.complete(job_id, "worker", {})
            status = JobStatus.SUCCEEDED
        by_id[job_id] = Listed(job_id, by_id[job_id].model, by_id[job_id].kind, status)
    for job in jobs[-300:]:
        queue.cancel(job.job_id)
        by_id[job.job_id] = Listed(job.job_id, job.model, job.kind, JobStatus.CANCELLED)
    return JobStore(client), [by_id[job.job_id] for job in jobs]


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client)


@pytest.fixture
def queue(redis_client: redis.Redis) -> JobQueue:
    return JobQueue(redis_client)


def test_list_jobs_pages_newest_first_through_every_job(
    fleet: tuple[JobStore, list[Listed]],
) -> None:
    store, jobs = fleet
    newest_first = [job.job_id for job in reversed(jobs)]

    pages = [store.list_jobs(offset=offset, limit=500) for offset in range(0, 3000, 500)]

    assert {page.total for page in pages} == {3000}
    assert [record.id for page in pages for record in page.records] == newest_first
    assert store.list_jobs(offset=2990, limit=50).total == 3000
    assert len(store.list_jobs(offset=2990, limit=50).records) == 10


@pytest.mark.parametrize(
    ("status", "model", "kind"),
    [
        (JobStatus.RUNNING, None, None),
        (None, "vae", None),
        (None, None, "sweep"),
        (JobStatus.QUEUED, "dcgan", None),
        (JobStatus.SUCCEEDED, "pixelcnn", "sweep"),
        (JobStatus.CANCELLED, "gated_pixelcnn", "train"),
        (JobStatus.DEAD, None, None),
    ],
)
def test_list_jobs_filters_combine(
    fleet: tuple[JobStore, list[Listed]],
    status: JobStatus | None,
    model: str | None,
    kind: str | None,
) -> None:
    store, jobs = fleet
    expected = [
        job.job_id
        for job in reversed(jobs)
        if status in (None, job.status) and model in (None, job.model) and kind in (None, job.kind)
    ]

    first = store.list_jobs(status=status, model=model, kind=kind, limit=20)
    second = store.list_jobs(status=status, model=model, kind=kind, offset=20, limit=20)

    assert first.total == second.total == len(expected)
    assert [record.id for record in first.records + second.records] == expected[:40]
    assert all(record.status == (status or record.status) for record in first.records)
    assert all(record.model_type == (model or record.model_type) for record in first.records)


def test_list_jobs_oldest_first(fleet: tuple[JobStore, list[Listed]]) -> None:
    store, jobs = fleet
    queued = [job.job_id for job in jobs if job.status is JobStatus.QUEUED]

    page = store.list_jobs(status=JobStatus.QUEUED, oldest_first=True, offset=5, limit=10)

    assert [record.id for record in page.records] == queued[5:15]
    two_filters = store.list_jobs(status="queued", model="vae", oldest_first=True, limit=3)
    expected = [job.job_id for job in jobs if job.status == "queued" and job.model == "vae"]
    assert [record.id for record in two_filters.records] == expected[:3]


def test_list_jobs_leaves_no_scratch_keys(fleet: tuple[JobStore, list[Listed]]) -> None:
    store, _ = fleet
    store.list_jobs(status="queued", model="vae", kind="train")

    assert list(store.redis.scan_iter(match=store.keys.scratch("*"))) == []


def test_counts_by_status(fleet: tuple[JobStore, list[Listed]]) -> None:
    store, jobs = fleet

    counts = store.counts_by_status()

    assert counts == {status: sum(job.status == status for job in jobs) for status in JobStatus}
    assert (counts[JobStatus.RUNNING], counts[JobStatus.SUCCEEDED]) == (300, 300)


def test_unknown_job_raises_job_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="no job with id 'missing'"):
        store.get("missing")
    with pytest.raises(JobNotFound):
        store.events("missing")
    with pytest.raises(JobNotFound):
        store.append_metrics("missing", {"epoch": 1})
    with pytest.raises(JobNotFound):
        store.append_event("missing", "note")
    assert store.redis.keys("*") == []  # no half-written record


def test_events_record_each_transition_with_its_worker(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    queue.claim("gpu-node-3", lease_seconds=30)
    store.append_event(job_id, "placed on 2 Ray workers", worker="dispatcher")
    queue.complete(job_id, "gpu-node-3", {"val_bits_per_dim": 1.1})

    events = store.events(job_id)

    assert [(event.status, event.message, event.worker) for event in events] == [
        (JobStatus.QUEUED, "submitted", None),
        (JobStatus.RUNNING, "attempt 1 of 3", "gpu-node-3"),
        (JobStatus.RUNNING, "placed on 2 Ray workers", "dispatcher"),
        (JobStatus.SUCCEEDED, "done", "gpu-node-3"),
    ]
    assert [event.ts for event in events] == sorted(event.ts for event in events)
    assert store.get(job_id).result == {"val_bits_per_dim": 1.1}


def test_metrics_round_trip_and_update_progress(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    rows = [
        {"epoch": 1, "epochs": 3, "step": 100, "train_bits_per_dim": 2.5, "val_bits_per_dim": 2.25},
        {"epoch": 2, "epochs": 3, "step": 200, "train_bits_per_dim": 2.0},  # no evaluation
        {"epoch": 3, "epochs": 3, "step": 300, "train_bits_per_dim": 1.5, "val_bits_per_dim": 1.75},
    ]

    for number, row in enumerate(rows):
        store.append_metrics(job_id, row)
        if number == 1:
            assert store.get(job_id).progress["val_bits_per_dim"] == 2.25  # latest value kept

    assert store.metrics(job_id) == rows
    assert store.get(job_id).progress == {
        "epoch": 3, "epochs": 3, "step": 300, "train_bits_per_dim": 1.5, "val_bits_per_dim": 1.75,
    }  # fmt: skip


def test_trial_metrics_are_kept_apart_and_leave_progress_alone(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec(kind="sweep"))

    store.append_metrics(job_id, {"epoch": 1, "val_bits_per_dim": 3.0}, trial="trial_0001")
    store.append_metrics(job_id, {"epoch": 1, "val_bits_per_dim": 2.0}, trial="trial_0002")

    assert store.metrics(job_id, trial="trial_0001") == [{"epoch": 1, "val_bits_per_dim": 3.0}]
    assert store.metrics(job_id, trial="trial_0002") == [{"epoch": 1, "val_bits_per_dim": 2.0}]
    assert store.metrics(job_id) == []
    assert store.get(job_id).progress == {}
    with pytest.raises(ValueError, match="trial: must match"):
        store.metrics(job_id, trial="../other")


def test_diverged_metrics_are_kept_as_none_and_non_numbers_refused(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())

    store.append_metrics(
        job_id, {"epoch": 4, "train_bits_per_dim": math.nan, "grad_norm": math.inf}
    )

    assert store.metrics(job_id) == [{"epoch": 4, "train_bits_per_dim": None, "grad_norm": None}]
    with pytest.raises(
        ValueError, match=re.escape("metrics.val_bits_per_dim: must be a number, got '1.2'")
    ):
        store.append_metrics(job_id, {"epoch": 5, "val_bits_per_dim": "1.2"})
    assert len(store.metrics(job_id)) == 1


def test_images_round_trip_as_bytes(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    for epoch in (2, 1):
        store.put_image(job_id, "samples", epoch, PNG + bytes([epoch]))
    store.put_image(job_id, "reconstructions", 1, PNG)
    store.put_image(job_id, "samples", 1, PNG + b"trial", trial="t1")

    assert store.list_images(job_id) == [
        ImageRef("reconstructions", 1),
        ImageRef("samples", 1),
        ImageRef("samples", 2),
    ]
    assert store.get_image(job_id, "samples", 2) == PNG + bytes([2])
    assert store.get_image(job_id, "samples", 1, trial="t1") == PNG + b"trial"
    assert store.list_images(job_id, trial="t1") == [ImageRef("samples", 1)]
    with pytest.raises(ImageNotFound, match=f"job {job_id}: no image 'samples' for epoch 3"):
        store.get_image(job_id, "samples", 3)


@pytest.mark.parametrize(
    ("name", "epoch", "png", "error"),
    [
        ("../samples", 1, PNG, "image name: must match"),
        ("Samples", 1, PNG, "image name: must match"),
        ("samples:1", 1, PNG, "image name: must match"),
        ("samples", -1, PNG, "epoch: must be an integer >= 0, got -1"),
        ("samples", 1, b"GIF89a...", "must be PNG bytes"),
    ],
)
def test_put_image_refuses_bad_names_epochs_and_non_png(
    queue: JobQueue, store: JobStore, name: str, epoch: int, png: bytes, error: str
) -> None:
    job_id = queue.submit(make_spec())

    with pytest.raises(ValueError, match=error):
        store.put_image(job_id, name, epoch, png)
    assert store.list_images(job_id) == []


def test_logs_keep_the_last_lines(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    for number in range(LOG_LINES_KEPT + 5):
        store.append_log(job_id, f"line {number}")

    assert store.logs(job_id, tail=3) == [f"line {LOG_LINES_KEPT + n}" for n in (2, 3, 4)]
    kept = store.logs(job_id, tail=LOG_LINES_KEPT * 2)
    assert (len(kept), kept[0]) == (LOG_LINES_KEPT, "line 5")


def test_logs_since_follows_new_lines_past_the_cap(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    assert (store.log_length(job_id), store.logs_since(job_id, 0)) == (0, [])
    for number in range(LOG_LINES_KEPT + 2):
        store.append_log(job_id, f"line {number}")
    seen = store.log_length(job_id)

    store.append_log(job_id, "epoch 7 done")
    store.append_log(job_id, "saved checkpoint")

    assert seen == LOG_LINES_KEPT + 2  # counts trimmed lines too
    assert store.logs_since(job_id, seen) == ["epoch 7 done", "saved checkpoint"]
    assert store.logs_since(job_id, seen + 2) == []
    assert store.logs_since(job_id, 0)[0] == "line 4"  # the oldest line the cap kept


def test_checkpoints_and_trials_round_trip(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec(kind="sweep"))
    store.add_checkpoint(job_id, 1, "file:///storage/a/epoch-1")
    store.add_checkpoint(job_id, 2, "s3://bucket/a/epoch-2", trial="t_02")
    store.put_trial(job_id, "t_02", {"config": {"train.lr": 0.01}, "status": "RUNNING"})
    store.put_trial(job_id, "t_01", {"config": {"train.lr": 0.001}, "status": "TERMINATED"})
    store.put_trial(job_id, "t_02", {"config": {"train.lr": 0.01}, "status": "STOPPED",
                                     "val_bits_per_dim": 1.4, "stop_reason": "asha", "iterations": 2})  # fmt: skip

    assert store.checkpoints(job_id) == [
        Checkpoint(1, "file:///storage/a/epoch-1"),
        Checkpoint(2, "s3://bucket/a/epoch-2", "t_02"),
    ]
    assert store.trials(job_id) == [
        {"trial_id": "t_01", "config": {"train.lr": 0.001}, "status": "TERMINATED"},
        {"trial_id": "t_02", "config": {"train.lr": 0.01}, "status": "STOPPED",
         "val_bits_per_dim": 1.4, "stop_reason": "asha", "iterations": 2},
    ]  # fmt: skip


def dispatcher_status(worker_id: str, jobs: dict[str, list[str]], free_cpus: float) -> dict:
    """Shaped as cluster/dispatcher.py publishes it; both dispatchers watch one two-node cluster."""
    return {
        "dispatcher": worker_id,
        "updated_at": time.time(),
        "nodes": [{"node_id": "head", "alive": True, "cpus": 8.0},
                  {"node_id": "gpu-1", "alive": True, "cpus": 16.0, "gpus": 2.0}],
        "available": {"cpus": free_cpus, "gpus": 0.0},
        "running_jobs": jobs,
    }  # fmt: skip


def test_cluster_status_merges_the_running_jobs_of_every_live_dispatcher(store: JobStore) -> None:
    first = dispatcher_status("host-a", {"job-1": ["head"]}, free_cpus=10.0)
    store.put_dispatcher_status("host-a", first, ttl_seconds=30)
    second = dispatcher_status("host-b", {"job-2": ["gpu-1"], "job-3": ["head", "gpu-1"]}, 4.0)
    store.put_dispatcher_status("host-b", second, ttl_seconds=30)
    first = dispatcher_status("host-a", {"job-1": ["head"], "job-4": ["head"]}, free_cpus=2.0)
    store.put_dispatcher_status("host-a", first, ttl_seconds=30)  # replaces its older status

    assert store.dispatcher_statuses() == [first, second]
    assert store.cluster_status() == {
        "nodes": first["nodes"],
        "available": {"cpus": 2.0, "gpus": 0.0},  # the newest report's, not a sum
        "running_jobs": {
            "job-1": ["head"], "job-2": ["gpu-1"], "job-3": ["head", "gpu-1"], "job-4": ["head"]
        },
        "dispatchers": [
            {"dispatcher": "host-a", "updated_at": first["updated_at"], "running_job_count": 2},
            {"dispatcher": "host-b", "updated_at": second["updated_at"], "running_job_count": 2},
        ],
    }  # fmt: skip


def test_a_dispatcher_whose_status_expires_drops_out_and_the_other_stays(
    store: JobStore,
) -> None:
    assert store.cluster_status() is None
    dead = dispatcher_status("host-dead", {"job-1": ["head"]}, free_cpus=16.0)
    alive = dispatcher_status("host-alive", {"job-2": ["gpu-1"]}, free_cpus=20.0)
    store.put_dispatcher_status("host-alive", alive, ttl_seconds=60)
    store.put_dispatcher_status("host-dead", dead, ttl_seconds=1)
    assert {status["dispatcher"] for status in store.dispatcher_statuses()} == {
        "host-alive",
        "host-dead",
    }

    time.sleep(1.1)

    assert store.dispatcher_statuses() == [alive]
    merged = store.cluster_status()
    assert merged["running_jobs"] == {"job-2": ["gpu-1"]}
    assert [entry["dispatcher"] for entry in merged["dispatchers"]] == ["host-alive"]


def test_cluster_status_is_none_once_every_dispatcher_has_expired(store: JobStore) -> None:
    store.put_dispatcher_status("host-a", dispatcher_status("host-a", {}, 24.0), ttl_seconds=1)
    assert store.cluster_status()["dispatchers"][0]["dispatcher"] == "host-a"

    time.sleep(1.1)

    assert store.dispatcher_statuses() == []
    assert store.cluster_status() is None


def test_expired_dispatchers_are_pruned_from_the_index_on_read_and_on_publish(
    store: JobStore,
) -> None:
    index = store.keys.dispatchers
    for worker_id in ("host-a", "host-b"):
        store.put_dispatcher_status(worker_id, dispatcher_status(worker_id, {}, 24.0), 1)
    time.sleep(1.1)
    assert store.redis.zcard(index) == 2  # expired statuses; nobody has read or published since

    store.dispatcher_statuses()
    assert store.redis.zcard(index) == 0

    store.put_dispatcher_status("host-c", dispatcher_status("host-c", {}, 24.0), 1)
    time.sleep(1.1)
    store.put_dispatcher_status("host-d", dispatcher_status("host-d", {}, 24.0), 30)
    assert store.redis.zrange(index, 0, -1) == [b"host-d"]
    assert not store.redis.exists(store.keys.dispatcher("host-c"))
