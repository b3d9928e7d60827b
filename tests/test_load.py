"""The queue under load and through a Redis outage, with real processes and redis-servers.

The submitters and claim loops are `bench/stress_bench.py`'s, so the benchmark measures the
load these tests check.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.stress_bench import SPEC, LoadRun, Target
from jobs.queue import JobQueue
from jobs.records import JobStatus
from jobs.redis_server import connect
from jobs.run_storage import RunStorage
from jobs.settings import MaxCluster
from jobs.spec import validate_spec_dict
from jobs.store import JobStore
from tests.ray_fixtures import Stack, stack_settings
from tests.redis_fixtures import RedisProcess
from tests.test_artifacts import fill_up

OUTAGE_SECONDS = 5.0
EPOCHS = 12  # long enough that the run is still going when Redis comes back


def status_events(store: JobStore, job_id: str) -> Counter[JobStatus]:
    return Counter(event.status for event in store.events(job_id))


def test_ten_thousand_jobs_from_eight_submitters_are_each_claimed_once_by_four_loops(
    redis_process: Callable[..., RedisProcess],
) -> None:
    server = redis_process()
    target = Target(server.url, "load")
    started = time.monotonic()

    with LoadRun(target, jobs=10_000, submitters=8, claimers=4) as run:
        load = run.wait(timeout=240)

    elapsed = time.monotonic() - started
    store = JobStore(server.client(), "load")
    submitted, claimed = load.submitted_ids, load.claimed_ids
    assert len(submitted) == len(set(submitted)) == 10_000
    assert store.list_jobs(limit=1).total == 10_000
    assert len(server.client().keys("load:job:*")) == 10_000
    assert sorted(claimed) == sorted(submitted)  # every job, and none twice
    assert all(part.job_ids for part in load.claimed)  # all four loops took a share
    assert all(part.redis_errors == 0 for part in load.claimed)
    counts = store.counts_by_status()
    assert counts[JobStatus.SUCCEEDED] == 10_000
    assert sum(counts.values()) == 10_000
    assert {record.attempts for record in store.get_many(submitted)} == {1}
    sample = submitted[:: 10_000 // 50]
    assert all(
        status_events(store, job_id)
        == {JobStatus.QUEUED: 1, JobStatus.RUNNING: 1, JobStatus.SUCCEEDED: 1}
        for job_id in sample
    )
    print(f"10,000 jobs submitted by 8 processes and drained by 4 in {elapsed:.1f} s")


def test_claim_loops_ride_out_a_redis_outage_and_lose_no_job(
    redis_process: Callable[..., RedisProcess],
) -> None:
    """redis-server is SIGKILLed mid-drain and restarted on its append-only file 5 s later.

    Delivery is at least once: a job whose claim ran but whose reply died with the server is
    reaped when its lease expires and claimed again. Each job still succeeds exactly once.
    """
    server = redis_process()
    queue = JobQueue(server.client(), "outage")
    store = JobStore(server.client(), "outage")
    submitted = [queue.submit(SPEC) for _ in range(3_000)]
    time.sleep(1.5)  # appendfsync everysec: the queued jobs are on disk before the kill

    with LoadRun(Target(server.url, "outage"), jobs=0, submitters=0, lease_seconds=3) as run:
        while store.counts_by_status()[JobStatus.SUCCEEDED] < 500:
            time.sleep(0.02)
        server.kill()
        time.sleep(OUTAGE_SECONDS)
        server.start()
        load = run.wait(timeout=180)

    store = JobStore(server.client(), "outage")  # a fresh client on the restarted server
    assert [process.exitcode for process in run.processes] == [0] * len(run.processes)
    assert all(part.redis_errors >= 10 for part in load.claimed)  # each one felt the outage
    assert all(part.claimed_after_errors > 0 for part in load.claimed)  # and went on
    counts = store.counts_by_status()
    assert counts[JobStatus.SUCCEEDED] == sum(counts.values()) == 3_000
    assert set(load.claimed_ids) <= set(submitted)
    records = store.get_many(submitted)
    assert len(records) == 3_000
    # A reaped lease is an interruption, not a failed run: it uses no attempt.
    assert {record.attempts for record in records} == {1}
    interrupted = [record.id for record in records if record.interruptions > 0]
    assert len(interrupted) <= 8  # at most the jobs in flight when the server died
    assert all(status_events(store, job_id)[JobStatus.SUCCEEDED] == 1 for job_id in submitted)


# -- the dispatcher itself, on Ray ------------------------------------------------------------


def tiny_job() -> dict:
    return {
        "name": "outage",
        "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
        "data": {"dataset": "digits"},
        "train": {"epochs": EPOCHS, "max_steps_per_epoch": 40, "num_samples": 4},
        "scaling": {"num_workers": 1, "max_failures": 0},
    }


@pytest.fixture
def outage_stack(
    tmp_path: Path, redis_process: Callable[..., RedisProcess], local_ray: str
) -> Iterator[tuple[Stack, RedisProcess]]:
    """A stack on a private redis-server, through the production client (`connect`)."""
    server = redis_process()
    prefix = f"o{os.getpid()}x{time.monotonic_ns() % 10**9}"
    settings = stack_settings(tmp_path, server.url, prefix)
    client = connect(settings)
    store = JobStore(client, prefix, RunStorage(settings.storage))
    yield Stack(JobQueue(client, prefix), store, settings), server
    client.close()


@pytest.mark.ray
def test_dispatcher_rides_out_a_redis_outage_then_a_full_redis_mid_run(
    outage_stack: tuple[Stack, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """One run through both (one run, to spare CI a second): Redis killed and restarted; then
    maxmemory reached, where the dispatcher says Redis is full, claims nothing and keeps the
    run's messages until space is freed. Nothing of the run is lost, no attempt used."""
    from cluster.dispatcher import Dispatcher

    stack, server = outage_stack
    settings = replace(stack.settings, max_cluster=MaxCluster(gpus=0))  # a CPU-only cluster
    dispatcher = Dispatcher(stack.queue, stack.store, settings, lease_seconds=15, poll_seconds=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    # Twice as long as the other runs, so that it still goes when Redis fills up.
    long_job = {**tiny_job(), "train": {**tiny_job()["train"], "epochs": 2 * EPOCHS}}
    job_id = stack.queue.submit(validate_spec_dict(long_job))
    caplog.set_level(logging.ERROR, logger="genfleet.dispatcher")
    filler = f"{stack.settings.prefix}:filler"
    thread.start()
    try:
        stack.wait_for(job_id, lambda record: bool(stack.store.metrics(job_id)), timeout=180)
        server.kill()
        time.sleep(OUTAGE_SECONDS)
        server.start()
        back_at = time.time()
        fill_up(server.client(), filler)
        # Set only by a write Redis refused: the run's next one.
        full = wait_until(lambda: (stack.store.cluster_status() or {}).get("redis_full_since"))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            stack.queue.submit(validate_spec_dict(tiny_job()))
        time.sleep(OUTAGE_SECONDS)  # the run goes on; what it sends waits in its relay
        server.client().delete(filler)
        record = stack.wait_final(job_id, timeout=180)
        cleared = wait_until(
            lambda: (stack.store.cluster_status() or {}).get("redis_full_since") is None
        )
        never_fits = stack.queue.submit(
            validate_spec_dict(
                {**tiny_job(), "scaling": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 4}}
            )
        )
        rejected = stack.wait_final(never_fits, timeout=30)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=60)

    assert full and cleared
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    assert record.finished_at > back_at  # it ran through the outage
    assert (record.attempts, record.interruptions) == (1, 0)  # no second run
    epochs = list(range(1, 2 * EPOCHS + 1))
    assert [row["epoch"] for row in stack.store.metrics(job_id)] == epochs  # none lost
    refs = stack.store.list_images(job_id)
    assert sorted({ref.epoch for ref in refs}) == epochs
    assert all(stack.store.get_image(job_id, ref.name, ref.epoch) for ref in refs)
    assert rejected.last_error == (
        "needs 8 GPUs, the cluster has at most 0 GPUs (GENFLEET_MAX_CLUSTER)"
    )
    failed_ticks = [r for r in caplog.records if r.getMessage().startswith("dispatcher tick")]
    assert failed_ticks, "the outage never reached the dispatcher"
    assert all(isinstance(r.exc_info[1], redis.ConnectionError) for r in failed_ticks)


def wait_until(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@pytest.mark.ray
def test_progress_drained_as_redis_dies_is_written_once_it_is_back(
    outage_stack: tuple[Stack, RedisProcess],
) -> None:
    """The dispatcher drains a run's relay, then writes to Redis: an outage in between must
    delay those metrics and logs, not drop them."""
    import ray

    from cluster.dispatcher import ActiveJob, Dispatcher
    from cluster.relay import Relay
    from jobs.messages import Log, Metrics
    from jobs.queue import Resources

    stack, server = outage_stack
    job_id = stack.queue.submit(validate_spec_dict(tiny_job()))
    claimed = stack.queue.claim("outage-dispatcher", lease_seconds=600)
    assert claimed is not None and claimed.job_id == job_id
    time.sleep(1.5)  # appendfsync everysec: the claim is on disk before the kill
    relay = Relay.remote()
    ray.get([relay.put.remote(Log(f"line {n}")) for n in range(3)])
    ray.get(relay.put.remote(Metrics({"epoch": 1, "loss": 0.5})))
    job = ActiveJob(
        claimed.lease,
        runner=None,
        result=None,
        relay=relay,
        needs=Resources(1.0, 0.0),
        spec=claimed.spec,
        attempt=claimed.attempt,
    )
    dispatcher = Dispatcher(
        stack.queue, stack.store, stack.settings, dispatcher_id="outage-dispatcher"
    )
    try:
        server.kill()
        with pytest.raises(redis.ConnectionError):
            dispatcher._relay(job, wait_seconds=60)  # drained, then refused by the dead server
        assert [type(message) for message in job.undelivered] == [Log, Log, Log, Metrics]
        server.start()
        dispatcher._relay(job, wait_seconds=60)
    finally:
        ray.kill(relay)

    assert stack.store.logs(job_id) == ["line 0", "line 1", "line 2"]
    assert stack.store.metrics(job_id) == [{"epoch": 1, "loss": 0.5}]
    assert list(job.undelivered) == []
