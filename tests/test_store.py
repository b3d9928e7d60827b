"""The job store against a real redis-server: listings at scale, events and artifacts."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

from jobs.keys import LOG_LINES_KEPT
from jobs.messages import Checkpoint as CheckpointMessage
from jobs.messages import (
    Controller,
    Fatal,
    Image,
    Log,
    Metrics,
    PlacementGroup,
    RunInfo,
    TrialUpdate,
    Worker,
)
from jobs.queue import JobQueue
from jobs.records import Event, JobNotFound, JobStatus, Lease, LeaseLost
from jobs.scheduling import Demand
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
        job = queue.claim("worker", lease_seconds=600)
        job_id = job.job_id
        status = JobStatus.RUNNING
        if claimed % 2 == 0:
            queue.complete(job.lease, {})
            status = JobStatus.SUCCEEDED
        by_id[job_id] = Listed(job_id, by_id[job_id].model, by_id[job_id].kind, status)
    for job in jobs[-300:]:
        queue.cancel(job.job_id)
        by_id[job.job_id] = Listed(job.job_id, job.model, job.kind, JobStatus.CANCELLED)
    return JobStore(client), [by_id[job.job_id] for job in jobs]


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
    with pytest.raises(JobNotFound):
        store.write_for_run(
            Lease("missing", "dispatcher", 1), [Log("a line"), Metrics({"epoch": 1})]
        )
    assert store.redis.keys("*") == []  # no half-written record


def test_events_record_each_transition_with_its_worker(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("gpu-node-3", lease_seconds=30)
    store.append_event(job_id, "placed on 2 Ray workers", dispatcher_id="dispatcher")
    queue.complete(job.lease, {"val_bits_per_dim": 1.1})

    events = store.events(job_id)

    assert [(event.status, event.message, event.dispatcher_id) for event in events] == [
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


# -- writes made for a run: write_for_run, behind the run's lease ------------------------------


@pytest.fixture
def lease(queue: JobQueue) -> Lease:
    """The lease of a running sweep, as its dispatcher holds it."""
    queue.submit(make_spec(kind="sweep"))
    return queue.claim("dispatcher-1", lease_seconds=30).lease


def stored(store: JobStore, job_id: str) -> dict[str, object]:
    """Every key's value under the job, for comparing before and after a write."""
    return {key: store.redis.dump(key) for key in sorted(store.redis.keys(f"*{job_id}*"))} | {
        "events": store.events(job_id)
    }


def test_write_for_run_stores_each_message_kind_where_the_readers_find_it(
    store: JobStore, lease: Lease
) -> None:
    job_id = lease.job_id

    store.write_for_run(
        lease,
        [
            Metrics({"epoch": 1, "val_bits_per_dim": 2.5, "grad_norm": math.inf}),
            Metrics({"epoch": 1, "val_bits_per_dim": 3.0}, trial="t_01"),
            Image("samples", 1, PNG),
            Image("samples", 1, PNG + b"trial", trial="t_01"),
            Log("epoch 1 done"),
            Log("epoch 1 done", trial="t_01"),
            CheckpointMessage(1, "/storage/sweep/epoch-1"),
            CheckpointMessage(2, "s3://bucket/sweep/t_01", trial="t_01"),
            TrialUpdate("t_01", {"config": {"train.lr": 0.01}, "status": "running"}),
            RunInfo({"device": "cpu", "parameters": 1200}),
            Fatal("loss is nan at step 7"),
            Fatal("loss is nan at step 3", trial="t_02"),
        ],
    )

    row = {"epoch": 1, "val_bits_per_dim": 2.5, "grad_norm": None}
    assert store.metrics(job_id) == [row]
    assert store.get(job_id).progress == row  # only the job's own rows
    assert store.metrics(job_id, trial="t_01") == [{"epoch": 1, "val_bits_per_dim": 3.0}]
    assert store.get_image(job_id, "samples", 1) == PNG
    assert store.get_image(job_id, "samples", 1, trial="t_01") == PNG + b"trial"
    assert store.list_images(job_id, trial="t_01") == [ImageRef("samples", 1)]
    assert store.logs(job_id) == [
        "epoch 1 done",
        "[t_01] epoch 1 done",
        "run stopped: loss is nan at step 7",
        "[t_02] run stopped: loss is nan at step 3",
    ]
    assert store.log_length(job_id) == 4
    assert store.checkpoints(job_id) == [
        Checkpoint(1, "/storage/sweep/epoch-1"),
        Checkpoint(2, "s3://bucket/sweep/t_01", "t_01"),
    ]
    assert store.trials(job_id) == [
        {"trial_id": "t_01", "config": {"train.lr": 0.01}, "status": "running"}
    ]
    info = store.events(job_id)[-1]
    assert (info.status, info.message, info.dispatcher_id) == (
        JobStatus.RUNNING,
        "run info: device=cpu, parameters=1200",
        "dispatcher-1",
    )
    assert store.get(job_id).status is JobStatus.RUNNING  # a Fatal is for the dispatcher to act on


@pytest.mark.parametrize(
    "refused",
    [
        lambda lease: Lease(lease.job_id, "dispatcher-2", lease.claim),
        lambda lease: Lease(lease.job_id, lease.owner, lease.claim - 1),
        lambda lease: Lease(lease.job_id, lease.owner, lease.claim + 1),
    ],
    ids=["another-dispatcher", "an-older-claim", "a-claim-never-made"],
)
def test_write_for_run_lands_all_of_a_batch_or_none_of_it_behind_the_lease(
    store: JobStore, lease: Lease, refused: Callable[[Lease], Lease]
) -> None:
    batch = [
        Metrics({"epoch": 1, "val_bits_per_dim": 2.5}),
        Image("samples", 1, PNG, trial="t_01"),
        Log("epoch 1 done"),
        CheckpointMessage(1, "/storage/sweep/epoch-1"),
        TrialUpdate("t_01", {"status": "running"}),
        RunInfo({"device": "cpu"}),
    ]
    before = stored(store, lease.job_id)

    with pytest.raises(LeaseLost):
        store.write_for_run(refused(lease), batch)

    assert stored(store, lease.job_id) == before
    store.write_for_run(lease, batch)
    job_id = lease.job_id
    assert (len(store.metrics(job_id)), store.list_images(job_id, trial="t_01")) == (
        1,
        [ImageRef("samples", 1)],
    )
    assert (store.logs(job_id), len(store.checkpoints(job_id)), len(store.trials(job_id))) == (
        ["epoch 1 done"],
        1,
        1,
    )
    assert store.events(job_id)[-1].message == "run info: device=cpu"


def test_write_for_run_refuses_every_write_once_the_job_has_finished(
    queue: JobQueue, store: JobStore, lease: Lease
) -> None:
    assert queue.complete(lease, {"best_trial": "t_01"}) is JobStatus.SUCCEEDED
    before = stored(store, lease.job_id)

    with pytest.raises(LeaseLost, match=f"no longer holds the lease on job {lease.job_id}"):
        store.write_for_run(lease, [Log("too late"), Metrics({"epoch": 2})])

    assert stored(store, lease.job_id) == before


def test_write_for_run_drops_a_message_it_refuses_with_a_log_line_and_keeps_the_rest(
    store: JobStore, lease: Lease
) -> None:
    job_id = lease.job_id

    store.write_for_run(
        lease,
        [
            Log("before"),
            Image("../samples", 1, PNG),
            Image("samples", 1, b"GIF89a..."),
            Image("samples", -1, PNG),
            Metrics({"epoch": 1, "val_bits_per_dim": "2.5"}),
            Log("from a trial", trial="../other"),
            Image("samples", 2, PNG),
            Log("after"),
        ],
    )

    assert store.logs(job_id) == [
        "before",
        "dropped a message (Image): image name: must match ^[a-z][a-z0-9_]{0,63}$, "
        "got '../samples'",
        "dropped a message (Image): image 'samples': must be PNG bytes, got b'GIF89a..'...",
        "dropped a message (Image): epoch: must be an integer >= 0, got -1",
        "dropped a message (Metrics): metrics.val_bits_per_dim: must be a number, got '2.5'",
        "dropped a message (Log): trial: must match ^[A-Za-z0-9_.-]{1,128}$, got '../other'",
        "after",
    ]
    assert store.list_images(job_id) == [ImageRef("samples", 2)]
    assert store.metrics(job_id) == []
    assert store.redis.keys("*other*") == []


def test_write_for_run_skips_messages_only_the_dispatcher_uses(
    store: JobStore, lease: Lease
) -> None:
    for_the_dispatcher = [
        Worker(rank=0, pid=4242, node_id="node-1", placement_group="pg-1"),
        Worker(rank=1, pid=4243, node_id="node-2", placement_group="pg-1", trial="t_01"),
        PlacementGroup("pg-2", trial="t_01"),
        Controller("the controller's actor handle", trial="t_01"),
    ]
    before = stored(store, lease.job_id)

    store.write_for_run(lease, for_the_dispatcher)

    assert stored(store, lease.job_id) == before
    store.write_for_run(lease, [*for_the_dispatcher, Log("epoch 1 done")])
    assert store.logs(lease.job_id) == ["epoch 1 done"]
    assert store.events(lease.job_id) == before["events"]


def dispatcher_status(dispatcher_id: str, jobs: dict[str, list[str]], free_cpus: float) -> dict:
    """Shaped as cluster/dispatcher.py publishes it; both dispatchers watch one two-node cluster."""
    return {
        "dispatcher": dispatcher_id,
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
        "waiting": [],
        "demand": None,
        "max_cluster": "",
        "redis_full_since": None,
        "dispatchers": [
            {"dispatcher": "host-a", "updated_at": first["updated_at"], "running_job_count": 2},
            {"dispatcher": "host-b", "updated_at": second["updated_at"], "running_job_count": 2},
        ],
    }  # fmt: skip


def test_cluster_status_takes_the_waiting_jobs_of_the_newest_and_the_demand_sent_last(
    store: JobStore,
) -> None:
    """Ray keeps only the latest request_resources, so the demand shown is the one sent last,
    whichever dispatcher reported last."""
    sent_last = Demand.grouped([{"CPU": 1.0, "GPU": 1.0}], ["job-9"], time.time(), "host-b")
    sent_first = Demand.grouped([], [], sent_last.sent_at - 5, "host-a")
    older = {
        **dispatcher_status("host-b", {}, 0.0),
        "demand": sent_last.as_json(),
        "waiting": [{"job_id": "job-9", "reason": "needs 1 GPU, 0 free"}],
    }
    newer = {
        **dispatcher_status("host-a", {}, 0.0),
        "demand": sent_first.as_json(),
        "waiting": [{"job_id": "job-9", "reason": "needs 1 GPU, 0 free, 1 job ahead"}],
        "max_cluster": "gpus=2",
    }
    store.put_dispatcher_status("host-b", older, ttl_seconds=30)
    store.put_dispatcher_status("host-a", newer, ttl_seconds=30)

    merged = store.cluster_status()
    assert merged["waiting"] == newer["waiting"]
    assert merged["max_cluster"] == "gpus=2"
    assert Demand.from_json(merged["demand"]) == sent_last


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
    for dispatcher_id in ("host-a", "host-b"):
        store.put_dispatcher_status(dispatcher_id, dispatcher_status(dispatcher_id, {}, 24.0), 1)
    time.sleep(1.1)
    assert store.redis.zcard(index) == 2  # expired statuses; nobody has read or published since

    store.dispatcher_statuses()
    assert store.redis.zcard(index) == 0

    store.put_dispatcher_status("host-c", dispatcher_status("host-c", {}, 24.0), 1)
    time.sleep(1.1)
    store.put_dispatcher_status("host-d", dispatcher_status("host-d", {}, 24.0), 30)
    assert store.redis.zrange(index, 0, -1) == [b"host-d"]
    assert not store.redis.exists(store.keys.dispatcher("host-c"))


def test_a_resumed_curve_rewinds_to_its_checkpoint_keeping_one_row_per_epoch(
    store: JobStore, lease: Lease
) -> None:
    job_id = lease.job_id
    first = [Metrics({"epoch": epoch, "loss": 1.0}) for epoch in (1, 2, 3, 4)]
    trial_rows = [Metrics({"epoch": epoch, "loss": 1.0}, trial="t_01") for epoch in (1, 2)]
    store.write_for_run(lease, [*first, *trial_rows])
    # Resumed after epoch 2: epochs 3 and 4 come again, with the values of the resumed run.
    store.write_for_run(
        lease, [Metrics({"epoch": 3, "loss": 0.5}), Metrics({"epoch": 4, "loss": 0.5})]
    )

    assert [(row["epoch"], row["loss"]) for row in store.metrics(job_id)] == [
        (1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)
    ]  # fmt: skip
    assert [row["epoch"] for row in store.metrics(job_id, trial="t_01")] == [1, 2]
    # A resume from scratch rewinds the whole curve.
    store.write_for_run(lease, [Metrics({"epoch": 1, "loss": 0.25})])
    assert store.metrics(job_id) == [{"epoch": 1, "loss": 0.25}]


def test_an_event_stored_before_the_rename_still_names_its_dispatcher() -> None:
    raw = b'{"ts": 1.5, "status": "running", "message": "attempt 1 of 3", "worker": "host-1"}'
    assert Event.from_json(raw).dispatcher_id == "host-1"
