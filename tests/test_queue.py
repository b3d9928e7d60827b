"""The job queue against real redis-server processes: ordering, leases, crashes, retries."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess

import pytest
import redis

from jobs.keys import IDEMPOTENCY_TTL_SECONDS, MAX_INTERRUPTIONS
from jobs.messages import Checkpoint, Fatal, Image, Log, Message, Metrics, RunInfo, TrialUpdate
from jobs.queue import Backoff, ClaimedJob, JobQueue, Resources
from jobs.records import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    JobStatus,
    Lease,
    LeaseLost,
)
from jobs.spec import JobSpec
from jobs.store import JobStore
from tests.redis_fixtures import RedisProcess


def make_spec(
    priority: int = 5, max_attempts: int = 3, gpus: int = 0, cpus: float = 1.0, name: str = "job"
) -> JobSpec:
    scaling = {"num_workers": max(gpus, 1), "cpus_per_worker": cpus / max(gpus, 1)}
    if gpus:
        scaling |= {"use_gpu": True, "gpus_per_worker": 1.0}
    return JobSpec.model_validate(
        {
            "name": name,
            "priority": priority,
            "max_attempts": max_attempts,
            "model": {"type": "pixelcnn"},
            "data": {"dataset": "digits"},
            "scaling": scaling,
        }
    )


def server_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def wait_for_lease_to_expire(queue: JobQueue, job_id: str) -> None:
    deadline = JobStore(queue.redis).get(job_id).lease_deadline
    assert deadline is not None
    time.sleep(max(0.0, deadline - server_time(queue.redis)) + 0.02)


def claim_when_due(queue: JobQueue, dispatcher_id: str, timeout: float = 5.0) -> ClaimedJob:
    """Poll claim until a job comes (a retry waiting out its backoff), or fail the test."""
    give_up = time.monotonic() + timeout
    while (job := queue.claim(dispatcher_id, lease_seconds=30)) is None:
        assert time.monotonic() < give_up, "no job became claimable"
        time.sleep(0.01)
    return job


SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as separate hosts would be


@pytest.fixture
def spawned() -> Iterator[Callable[..., BaseProcess]]:
    """Start processes that are SIGKILLed after the test even when it fails midway."""
    started: list[BaseProcess] = []

    def start(target: Callable[..., None], *args: object) -> BaseProcess:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=10)


@pytest.fixture
def queue(redis_client: redis.Redis) -> JobQueue:
    return JobQueue(redis_client, backoff=Backoff(base_seconds=0.05, cap_seconds=0.05))


def test_claims_follow_priority_then_submit_order(queue: JobQueue) -> None:
    submitted = [(priority, queue.submit(make_spec(priority))) for priority in (3, 9, 3, 0, 9, 5)]
    expected = [job_id for _, job_id in sorted(submitted, key=lambda pair: -pair[0])]

    claimed = [queue.claim("worker", lease_seconds=30).job_id for _ in submitted]

    assert claimed == expected
    assert queue.claim("worker", lease_seconds=30) is None


def test_priority_argument_overrides_the_spec(queue: JobQueue, store: JobStore) -> None:
    low = queue.submit(make_spec(priority=5), priority=1)
    high = queue.submit(make_spec(priority=1), priority=8)

    assert queue.queued() == [high, low]
    assert store.get(low).priority == 1
    with pytest.raises(ValueError, match=re.escape("priority: must be an integer 0..9, got 10")):
        queue.submit(make_spec(), priority=10)


def test_submit_with_same_idempotency_key_and_spec_returns_same_job(
    queue: JobQueue, redis_client: redis.Redis
) -> None:
    first = queue.submit(make_spec(), idempotency_key="upload-42")
    again = queue.submit(make_spec(), idempotency_key="upload-42")
    other = queue.submit(make_spec(), idempotency_key="upload-43")

    assert again == first
    assert other != first
    assert queue.queued() == [first, other]
    ttl = redis_client.ttl(queue.keys.idempotency("upload-42"))
    assert IDEMPOTENCY_TTL_SECONDS - 5 < ttl <= IDEMPOTENCY_TTL_SECONDS


def test_submit_stores_record_with_resource_needs(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec(gpus=4, cpus=8, name="big run", max_attempts=7))

    record = store.get(job_id)
    assert (record.needs_cpus, record.needs_gpus) == (8.0, 4.0)
    assert (record.name, record.kind, record.model_type, record.dataset) == (
        "big run", "train", "pixelcnn", "digits",
    )  # fmt: skip
    assert (record.status, record.attempts, record.max_attempts) == (JobStatus.QUEUED, 0, 7)
    assert record.job_spec() == make_spec(gpus=4, cpus=8, name="big run", max_attempts=7)
    assert record.created_at == record.updated_at
    assert [event.message for event in store.events(job_id)] == ["submitted"]


def _claim_until_empty(port: int, dispatcher_id: str, start_together, claimed) -> None:
    """Runs in a spawned process: claim and complete until the queue is empty."""
    queue = JobQueue(redis.Redis(host="127.0.0.1", port=port))
    start_together.wait()
    job_ids = []
    while (job := queue.claim(dispatcher_id, lease_seconds=60)) is not None:
        job_ids.append(job.job_id)
        assert queue.complete(job.lease, {"by": dispatcher_id}) is JobStatus.SUCCEEDED
    claimed.put(job_ids)


def test_eight_processes_claim_each_of_500_jobs_exactly_once(
    queue: JobQueue,
    store: JobStore,
    redis_server: RedisProcess,
    spawned: Callable[..., BaseProcess],
) -> None:
    submitted = {queue.submit(make_spec(priority=index % 10)) for index in range(500)}
    start_together, claimed = SPAWN.Barrier(8), SPAWN.Queue()
    for n in range(8):
        spawned(_claim_until_empty, redis_server.port, f"worker-{n}", start_together, claimed)

    per_worker = [claimed.get(timeout=120) for _ in range(8)]

    everything = [job_id for job_ids in per_worker for job_id in job_ids]
    assert len(everything) == 500
    assert set(everything) == submitted
    assert sum(1 for job_ids in per_worker if job_ids) >= 2  # they really competed
    assert store.counts_by_status()[JobStatus.SUCCEEDED] == 500
    assert {store.get(job_id).attempts for job_id in submitted} == {1}


def _claim_then_hang(port: int, claimed) -> None:
    """Runs in a spawned process: claim one job with a short lease, then never renew it."""
    queue = JobQueue(redis.Redis(host="127.0.0.1", port=port))
    job = queue.claim("doomed-worker", lease_seconds=2.0)
    claimed.put(job.job_id)
    time.sleep(600)


def test_claimed_job_returns_to_queue_when_lease_expires(
    queue: JobQueue,
    store: JobStore,
    redis_server: RedisProcess,
    spawned: Callable[..., BaseProcess],
) -> None:
    job_id = queue.submit(make_spec())
    queue.submit(make_spec())  # a later job must not overtake the crashed one
    claimed = SPAWN.Queue()
    worker = spawned(_claim_then_hang, redis_server.port, claimed)
    assert claimed.get(timeout=60) == job_id
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    assert worker.exitcode == -signal.SIGKILL

    assert queue.requeue_expired() == []  # the lease still runs
    assert store.get(job_id).status is JobStatus.RUNNING
    wait_for_lease_to_expire(queue, job_id)
    assert queue.requeue_expired() == [job_id]

    record = store.get(job_id)
    assert record.status is JobStatus.QUEUED
    # A crash is an interruption, not a failure of the run: the attempt is given back.
    assert (record.attempts, record.interruptions) == (0, 1)
    assert store.events(job_id)[-1].message == (
        f"lease of dispatcher doomed-worker expired during attempt 1 "
        f"(interruption 1 of {MAX_INTERRUPTIONS})"
    )
    assert queue.queue_position(job_id) == 0
    again = queue.claim("rescuer", lease_seconds=30)
    assert (again.job_id, again.attempt, again.record.owner) == (job_id, 1, "rescuer")
    assert again.lease == Lease(job_id, "rescuer", 2)


def test_renewed_lease_keeps_job_from_reaper(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("worker", lease_seconds=0.3)

    queue.renew_lease(job.lease, lease_seconds=30)
    time.sleep(0.4)

    assert queue.requeue_expired() == []
    record = store.get(job_id)
    assert record.status is JobStatus.RUNNING
    assert record.lease_deadline > server_time(queue.redis) + 29


def test_worker_that_lost_its_lease_cannot_finish_the_job(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    slow = queue.claim("slow-worker", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)
    assert queue.requeue_expired() == [job_id]
    new = queue.claim("new-worker", lease_seconds=30)
    assert new.attempt == 1  # the expiry used no attempt

    lost = f"dispatcher slow-worker no longer holds the lease on job {job_id}"
    with pytest.raises(LeaseLost, match=lost):
        queue.renew_lease(slow.lease, lease_seconds=30)
    with pytest.raises(LeaseLost, match=lost):
        queue.complete(slow.lease, {"loss": 1.0})
    with pytest.raises(LeaseLost, match=lost) as failed:
        queue.fail(slow.lease, "late error")
    assert (failed.value.job_id, failed.value.dispatcher_id) == (job_id, "slow-worker")
    queue.renew_lease(new.lease, lease_seconds=30)
    assert queue.complete(new.lease, {"loss": 0.5}) is JobStatus.SUCCEEDED
    assert store.get(job_id).result == {"loss": 0.5}


def test_poison_job_is_dead_lettered_after_max_attempts_with_error_and_traceback(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec(max_attempts=3))

    outcomes = []
    for attempt in (1, 2, 3):
        job = claim_when_due(queue, "worker")
        assert (job.job_id, job.attempt) == (job_id, attempt)
        traceback = f'Traceback:\n  File "train.py", line {attempt}\nRuntimeError: boom {attempt}'
        outcomes.append(queue.fail(job.lease, f"boom {attempt}", traceback))

    assert outcomes == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.DEAD]
    record = store.get(job_id)
    assert (record.status, record.attempts) == (JobStatus.DEAD, 3)
    assert record.last_error == "boom 3"
    assert record.last_traceback.endswith("line 3\nRuntimeError: boom 3")
    assert record.finished_at is not None and record.lease_deadline is None
    time.sleep(0.1)  # longer than the backoff: nothing may come back
    assert queue.claim("worker", lease_seconds=30) is None
    statuses = [event.status for event in store.events(job_id)]
    assert statuses == ["queued", "running", "queued", "running", "queued", "running", "dead"]


def test_retry_waits_out_exponential_backoff(redis_client: redis.Redis, store: JobStore) -> None:
    queue = JobQueue(redis_client, backoff=Backoff(base_seconds=0.4, cap_seconds=0.6))
    job_id = queue.submit(make_spec(max_attempts=5))

    job = queue.claim("worker", lease_seconds=30)
    for expected_delay in (0.4, 0.6):  # 0.4 * 2^0, then 0.4 * 2^1 capped at 0.6
        assert queue.fail(job.lease, "flaky") is JobStatus.QUEUED
        failed_at = store.get(job_id).updated_at
        due = redis_client.zscore(queue.keys.delayed, job_id)
        assert due - failed_at == pytest.approx(expected_delay, abs=1e-3)
        assert store.get(job_id).pending_reason == f"retry after {expected_delay:.1f} s backoff"
        assert queue.claim("worker", lease_seconds=30) is None
        assert queue.queue_position(job_id) is None

        job = claim_when_due(queue, "worker")
        assert job.record.started_at >= due
        assert job.record.pending_reason is None


def test_non_retryable_failure_fails_job_at_once(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec(max_attempts=5))
    job = queue.claim("worker", lease_seconds=30)

    status = queue.fail(job.lease, "train.lr: must be > 0", retryable=False)

    assert status is JobStatus.FAILED
    assert (store.get(job_id).status, store.get(job_id).attempts) == (JobStatus.FAILED, 1)
    time.sleep(0.1)
    assert queue.claim("worker", lease_seconds=30) is None


def test_claim_with_fits_skips_big_job_without_losing_its_place(queue: JobQueue) -> None:
    big = queue.submit(make_spec(gpus=4, cpus=8))
    small = queue.submit(make_spec(cpus=2))
    later_small = queue.submit(make_spec(cpus=2))
    two_gpus_free = Resources(cpus=16, gpus=2)

    assert queue.claim("worker", 30, fits=two_gpus_free).job_id == small
    assert queue.queue_position(big) == 0
    assert queue.claim("worker", 30, fits=Resources(cpus=1, gpus=4)) is None
    assert queue.claim("worker", 30, fits=two_gpus_free).job_id == later_small
    assert queue.claim("worker", 30, fits=two_gpus_free) is None
    assert queue.claim("worker", 30, fits=Resources(cpus=8, gpus=4)).job_id == big


def test_cancel_queued_job_removes_it_from_queue(queue: JobQueue, store: JobStore) -> None:
    doomed = queue.submit(make_spec())
    kept = queue.submit(make_spec())

    assert queue.cancel(doomed) is JobStatus.CANCELLED

    assert queue.queued() == [kept]
    record = store.get(doomed)
    assert record.status is JobStatus.CANCELLED and record.finished_at is not None
    assert queue.claim("worker", 30).job_id == kept
    assert queue.claim("worker", 30) is None
    assert queue.cancel(doomed) is JobStatus.CANCELLED  # cancelling twice is harmless


def test_cancel_of_job_waiting_out_backoff_keeps_it_from_coming_back(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("worker", 30)
    queue.fail(job.lease, "flaky")

    assert queue.cancel(job_id) is JobStatus.CANCELLED
    time.sleep(0.1)
    assert queue.claim("worker", 30) is None
    assert store.get(job_id).status is JobStatus.CANCELLED


def test_cancel_running_job_sets_flag_until_dispatcher_marks_it_cancelled(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("worker", lease_seconds=30)
    assert not queue.is_cancel_requested(job_id)

    assert queue.cancel(job_id) is JobStatus.RUNNING

    assert queue.is_cancel_requested(job_id)
    assert store.get(job_id).status is JobStatus.RUNNING
    assert queue.mark_cancelled(job.lease) is JobStatus.CANCELLED
    record = store.get(job_id)
    assert (record.status, record.cancel_requested) == (JobStatus.CANCELLED, True)
    assert queue.requeue_expired() == []
    assert [event.message for event in store.events(job_id)][-2:] == [
        "cancel requested",
        "stopped after a cancel request",
    ]


def test_running_job_with_cancel_requested_is_not_retried(queue: JobQueue, store: JobStore) -> None:
    failing, crashing = queue.submit(make_spec()), queue.submit(make_spec())
    failing_job = queue.claim("worker", lease_seconds=30)
    queue.claim("worker", lease_seconds=0.1)
    queue.cancel(failing)
    queue.cancel(crashing)

    assert queue.fail(failing_job.lease, "killed by the dispatcher") is JobStatus.CANCELLED
    wait_for_lease_to_expire(queue, crashing)
    assert queue.requeue_expired() == [crashing]
    assert store.get(crashing).status is JobStatus.CANCELLED


def test_set_priority_resorts_queued_job_and_keeps_fifo_among_equals(
    queue: JobQueue, store: JobStore
) -> None:
    first, second, third = (queue.submit(make_spec(priority=5)) for _ in range(3))

    queue.set_priority(third, 9)
    assert queue.queued() == [third, first, second]
    queue.set_priority(third, 5)
    assert queue.queued() == [first, second, third]
    queue.set_priority(first, 0)
    assert queue.queued() == [second, third, first]
    assert store.get(first).priority == 0
    with pytest.raises(ValueError, match=re.escape("priority: must be an integer 0..9, got 12")):
        queue.set_priority(first, 12)


def test_retry_puts_dead_job_back_with_attempts_reset(queue: JobQueue, store: JobStore) -> None:
    dead = queue.submit(make_spec(max_attempts=1))
    job = queue.claim("worker", lease_seconds=30)
    assert queue.fail(job.lease, "out of memory") is JobStatus.DEAD
    waiting = queue.submit(make_spec())

    queue.retry(dead)

    record = store.get(dead)
    assert (record.status, record.attempts, record.finished_at) == (JobStatus.QUEUED, 0, None)
    assert queue.queued() == [waiting, dead]  # behind jobs queued before the retry
    queue.claim("worker", lease_seconds=30)
    again = queue.claim("worker", lease_seconds=30)
    assert (again.job_id, again.attempt) == (dead, 1)


def test_illegal_transitions_name_the_job_its_status_and_what_is_allowed(
    queue: JobQueue,
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("worker", lease_seconds=30)

    with pytest.raises(InvalidTransition) as retry_running:
        queue.retry(job_id)
    assert str(retry_running.value) == (
        f"cannot retry job {job_id}: it is running; retry needs a failed, dead or cancelled job"
    )
    queue.complete(job.lease, {})
    with pytest.raises(InvalidTransition, match=f"cannot cancel job {job_id}: it is succeeded"):
        queue.cancel(job_id)
    with pytest.raises(InvalidTransition, match="it is succeeded; reprioritise needs a queued"):
        queue.set_priority(job_id, 1)


@pytest.mark.parametrize(
    "action",
    [
        lambda queue: queue.cancel("nope"),
        lambda queue: queue.retry("nope"),
        lambda queue: queue.set_priority("nope", 3),
        lambda queue: queue.renew_lease(Lease("nope", "worker", 1), 30),
        lambda queue: queue.complete(Lease("nope", "worker", 1), {}),
        lambda queue: queue.fail(Lease("nope", "worker", 1), "error"),
        lambda queue: queue.mark_cancelled(Lease("nope", "worker", 1)),
        lambda queue: queue.release(Lease("nope", "worker", 1), "stopping"),
        lambda queue: queue.is_cancel_requested("nope"),
        lambda queue: queue.set_pending_reason("nope", "waiting"),
    ],
)
def test_unknown_job_id_raises_job_not_found(
    queue: JobQueue, store: JobStore, action: Callable[[JobQueue], object]
) -> None:
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        action(queue)
    assert store.counts_by_status() == dict.fromkeys(JobStatus, 0)  # nothing half-written


def test_reaper_skips_job_still_running_elsewhere(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec())
    queue.claim("worker", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)
    asked = []

    def still_running(candidate: str) -> bool:
        asked.append(candidate)
        return True

    assert queue.requeue_expired(still_running) == []
    assert asked == [job_id]
    assert store.get(job_id).status is JobStatus.RUNNING
    assert queue.requeue_expired(lambda candidate: False) == [job_id]
    assert store.get(job_id).status is JobStatus.QUEUED


def test_lease_expiry_on_last_attempt_uses_no_attempt_and_a_run_failure_dead_letters_it(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec(max_attempts=1))
    queue.claim("worker", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)

    assert queue.requeue_expired() == [job_id]

    record = store.get(job_id)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 1)
    again = queue.claim("worker", lease_seconds=30)
    assert (again.job_id, again.attempt) == (job_id, 1)
    assert queue.fail(again.lease, "out of memory") is JobStatus.DEAD
    record = store.get(job_id)
    assert (record.status, record.last_error) == (JobStatus.DEAD, "out of memory")
    assert queue.claim("worker", lease_seconds=30) is None


def test_job_is_dead_after_max_interruptions_expired_leases(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec(max_attempts=1))

    outcomes = []
    for crash in range(MAX_INTERRUPTIONS):
        job = queue.claim(f"dispatcher-{crash}", lease_seconds=0.05)
        assert (job.job_id, job.attempt) == (job_id, 1)  # expiries never use up the attempt
        wait_for_lease_to_expire(queue, job_id)
        assert queue.requeue_expired() == [job_id]
        outcomes.append(store.get(job_id).status)

    assert outcomes == [JobStatus.QUEUED] * (MAX_INTERRUPTIONS - 1) + [JobStatus.DEAD]
    record = store.get(job_id)
    last = MAX_INTERRUPTIONS - 1
    expected_error = (
        f"lease of dispatcher dispatcher-{last} expired during attempt 1 "
        f"(interruption {MAX_INTERRUPTIONS} of {MAX_INTERRUPTIONS})"
    )
    assert (record.status, record.attempts, record.interruptions, record.last_error) == (
        JobStatus.DEAD,
        0,
        MAX_INTERRUPTIONS,
        expected_error,
    )
    assert record.finished_at is not None and record.lease_deadline is None
    final = store.events(job_id)[-1]
    assert (final.status, final.message) == (
        JobStatus.DEAD,
        expected_error + ": too many interruptions",
    )
    assert queue.claim("worker", lease_seconds=30) is None
    assert queue.requeue_expired() == []


def test_release_hands_back_without_an_attempt_and_keeps_the_jobs_place(
    queue: JobQueue, store: JobStore, redis_client: redis.Redis
) -> None:
    first, second, third = (queue.submit(make_spec(priority=5)) for _ in range(3))
    job = queue.claim("dispatcher-1", lease_seconds=30)
    assert job.job_id == first
    assert queue.queued() == [second, third]

    status = queue.release(job.lease, "handed back: dispatcher dispatcher-1 stopped")

    assert status is JobStatus.QUEUED
    assert queue.queued() == [first, second, third]  # FIFO among equals, as if never claimed
    record = store.get(first)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
    assert record.lease_deadline is None and record.finished_at is None
    assert redis_client.zscore(queue.keys.running, first) is None
    final = store.events(first)[-1]
    assert (final.status, final.message, final.dispatcher_id) == (
        JobStatus.QUEUED,
        "handed back: dispatcher dispatcher-1 stopped",
        "dispatcher-1",
    )
    again = queue.claim("dispatcher-2", lease_seconds=30)
    assert (again.job_id, again.attempt, again.lease) == (first, 1, Lease(first, "dispatcher-2", 2))


def test_three_sigterm_releases_in_a_row_do_not_dead_letter_the_job(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec(max_attempts=1))

    for stop in range(3):
        job = queue.claim(f"dispatcher-{stop}", lease_seconds=30)
        assert (job.job_id, job.attempt) == (job_id, 1)
        assert queue.release(job.lease, "handed back: dispatcher stopped") is JobStatus.QUEUED

    record = store.get(job_id)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
    job = queue.claim("dispatcher-3", lease_seconds=30)
    assert (job.job_id, job.attempt, job.lease.claim) == (job_id, 1, 4)
    assert queue.fail(job.lease, "out of memory") is JobStatus.DEAD  # a run failure still counts


def test_interrupted_release_counts_toward_the_cap_and_retry_resets_it(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    statuses = []
    for _ in range(MAX_INTERRUPTIONS):
        job = queue.claim("dispatcher", lease_seconds=30)
        statuses.append(queue.release(job.lease, "its relay actor was lost", interrupted=True))
    assert statuses == [JobStatus.QUEUED] * (MAX_INTERRUPTIONS - 1) + [JobStatus.DEAD]
    assert store.get(job_id).interruptions == MAX_INTERRUPTIONS

    queue.retry(job_id)

    record = store.get(job_id)
    assert (record.status, record.attempts, record.interruptions) == (JobStatus.QUEUED, 0, 0)
    job = queue.claim("dispatcher", lease_seconds=30)
    assert job.attempt == 1
    assert queue.release(job.lease, "its node was lost", interrupted=True) is JobStatus.QUEUED
    assert store.events(job_id)[-1].message == (
        f"its node was lost (interruption 1 of {MAX_INTERRUPTIONS})"
    )


def test_release_of_a_job_with_a_cancel_pending_ends_it_cancelled(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("dispatcher", lease_seconds=30)
    queue.cancel(job_id)

    assert queue.release(job.lease, "handed back: dispatcher stopped") is JobStatus.CANCELLED

    record = store.get(job_id)
    assert (record.status, record.attempts) == (JobStatus.CANCELLED, 0)
    assert record.finished_at is not None
    assert queue.queued() == []
    assert queue.claim("dispatcher", lease_seconds=30) is None


def test_run_that_completes_while_a_cancel_is_pending_ends_cancelled_with_its_result(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("dispatcher", lease_seconds=30)
    assert queue.cancel(job_id) is JobStatus.RUNNING

    status = queue.complete(job.lease, {"val_bits_per_dim": 1.25})

    assert status is JobStatus.CANCELLED
    record = store.get(job_id)
    assert (record.status, record.result) == (JobStatus.CANCELLED, {"val_bits_per_dim": 1.25})
    assert record.finished_at is not None and record.lease_deadline is None
    assert [(event.status, event.message) for event in store.events(job_id)][-2:] == [
        (JobStatus.RUNNING, "cancel requested"),
        (
            JobStatus.CANCELLED,
            "cancelled: the run finished before it could be stopped; its result is kept",
        ),
    ]
    counts = store.counts_by_status()
    assert (counts[JobStatus.CANCELLED], counts[JobStatus.SUCCEEDED]) == (1, 0)
    assert queue.requeue_expired() == []


def test_idempotency_key_is_bound_to_the_priority_and_parent_it_came_with(
    queue: JobQueue,
) -> None:
    first = queue.submit(make_spec(), idempotency_key="retry-7", priority=3, parent="sweep-1")
    assert queue.submit(make_spec(), idempotency_key="retry-7", priority=3, parent="sweep-1") == (
        first
    )
    for other in ({"priority": 4, "parent": "sweep-1"}, {"priority": 3, "parent": None}):
        with pytest.raises(IdempotencyConflict) as conflict:
            queue.submit(make_spec(), idempotency_key="retry-7", **other)
        assert conflict.value.job_id == first
    assert queue.queued() == [first]


def test_idempotency_key_with_another_spec_names_the_existing_job_and_changes_nothing(
    queue: JobQueue, store: JobStore, redis_client: redis.Redis
) -> None:
    first = queue.submit(make_spec(), idempotency_key="upload-42")
    key = queue.keys.idempotency("upload-42")
    keys_before, stored_before = sorted(redis_client.keys("*")), redis_client.get(key)
    events_before = store.events(first)

    with pytest.raises(IdempotencyConflict) as conflict:
        queue.submit(make_spec(priority=9), idempotency_key="upload-42")

    assert isinstance(conflict.value, ValueError)
    assert conflict.value.job_id == first
    assert str(conflict.value) == (
        f"idempotency key 'upload-42' already belongs to job {first}, submitted with another "
        "spec, priority or parent; use a new key, or the same request to get that job back"
    )
    assert sorted(redis_client.keys("*")) == keys_before
    assert redis_client.get(key) == stored_before
    assert queue.queued() == [first]
    assert store.list_jobs().total == 1
    assert store.events(first) == events_before
    assert queue.submit(make_spec(), idempotency_key="upload-42") == first  # still the same job


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))


def every_kind_of_message(trial: str = "t_01") -> list[Message]:
    """One message of each stored kind, for the job and for a trial."""
    return [
        Metrics({"epoch": 1, "val_bits_per_dim": 2.5}),
        Metrics({"epoch": 1, "val_bits_per_dim": 3.5}, trial),
        Image("samples", 1, PNG),
        Image("samples", 1, PNG, trial),
        Log("epoch 1 done"),
        Checkpoint(1, "/storage/run/epoch-1"),
        TrialUpdate(trial, {"config": {"train.lr": 0.01}, "status": "running"}),
        RunInfo({"device": "cpu"}),
        Fatal("loss diverged", trial),
    ]


def artifacts(store: JobStore, job_id: str, trial: str = "t_01") -> dict[str, object]:
    """Everything a run can write, as the readers see it."""
    return {
        "metrics": store.metrics(job_id),
        "trial metrics": store.metrics(job_id, trial=trial),
        "images": store.list_images(job_id),
        "trial images": store.list_images(job_id, trial=trial),
        "logs": store.logs(job_id),
        "log length": store.log_length(job_id),
        "checkpoints": store.checkpoints(job_id),
        "trials": store.trials(job_id),
        "events": store.events(job_id),
        "progress": store.get(job_id).progress,
    }


def test_writes_for_a_run_whose_lease_expired_and_was_claimed_again_are_refused(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    cut_off = queue.claim("dispatcher-a", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)
    assert queue.requeue_expired() == [job_id]
    owner = queue.claim("dispatcher-b", lease_seconds=30)
    before = artifacts(store, job_id)

    with pytest.raises(
        LeaseLost, match=f"dispatcher dispatcher-a no longer holds the lease on job {job_id}"
    ):
        store.write_for_run(cut_off.lease, every_kind_of_message())

    assert artifacts(store, job_id) == before
    assert {name: value for name, value in before.items() if name != "events"} == {
        "metrics": [], "trial metrics": [], "images": [], "trial images": [], "logs": [],
        "log length": 0, "checkpoints": [], "trials": [], "progress": {},
    }  # fmt: skip
    store.write_for_run(owner.lease, every_kind_of_message())  # the owner's batch lands
    landed = artifacts(store, job_id)
    assert (len(landed["metrics"]), len(landed["trial images"]), len(landed["trials"])) == (1, 1, 1)
    assert landed["progress"] == {"epoch": 1, "val_bits_per_dim": 2.5}


def test_the_same_dispatcher_claiming_a_job_again_cannot_use_its_older_lease(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    older = queue.claim("dispatcher-a", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)
    assert queue.requeue_expired() == [job_id]
    newer = queue.claim("dispatcher-a", lease_seconds=30)
    assert (older.lease, newer.lease) == (
        Lease(job_id, "dispatcher-a", 1),
        Lease(job_id, "dispatcher-a", 2),
    )

    with pytest.raises(LeaseLost):
        store.write_for_run(older.lease, [Log("from the copy of the run cut off")])
    with pytest.raises(LeaseLost):
        queue.renew_lease(older.lease, 30)
    with pytest.raises(LeaseLost):
        queue.complete(older.lease, {"copy": "old"})

    store.write_for_run(newer.lease, [Log("from the run that owns the job")])
    assert store.logs(job_id) == ["from the run that owns the job"]
    assert queue.complete(newer.lease, {"copy": "new"}) is JobStatus.SUCCEEDED
    assert store.get(job_id).result == {"copy": "new"}


@pytest.mark.parametrize(
    "stale_call",
    [
        lambda queue, lease: queue.renew_lease(lease, 30),
        lambda queue, lease: queue.complete(lease, {"loss": 1.0}),
        lambda queue, lease: queue.fail(lease, "late error", "Traceback ..."),
        lambda queue, lease: queue.fail(lease, "late error", retryable=False),
        lambda queue, lease: queue.mark_cancelled(lease),
        lambda queue, lease: queue.release(lease, "handed back"),
        lambda queue, lease: queue.release(lease, "relay lost", interrupted=True),
    ],
    ids=["renew", "complete", "fail", "fail-final", "mark-cancelled", "release", "interrupt"],
)
def test_leased_calls_with_a_stale_lease_raise_lease_lost_and_change_nothing(
    queue: JobQueue,
    store: JobStore,
    redis_client: redis.Redis,
    stale_call: Callable[[JobQueue, Lease], object],
) -> None:
    job_id = queue.submit(make_spec())
    stale = queue.claim("dispatcher-a", lease_seconds=0.1)
    wait_for_lease_to_expire(queue, job_id)
    assert queue.requeue_expired() == [job_id]
    queue.claim("dispatcher-b", lease_seconds=30)
    queue.cancel(job_id)  # a pending cancel: mark_cancelled and release would act on it
    record, events = store.get(job_id), store.events(job_id)
    deadline = redis_client.zscore(queue.keys.running, job_id)

    with pytest.raises(LeaseLost) as lost:
        stale_call(queue, stale.lease)

    assert (lost.value.job_id, lost.value.dispatcher_id) == (job_id, "dispatcher-a")
    assert store.get(job_id) == record
    assert store.events(job_id) == events
    assert redis_client.zscore(queue.keys.running, job_id) == deadline
    assert (queue.queued(), redis_client.zcard(queue.keys.delayed)) == ([], 0)


def test_a_finished_job_refuses_the_lease_it_finished_with(
    queue: JobQueue, store: JobStore
) -> None:
    job_id = queue.submit(make_spec())
    job = queue.claim("dispatcher", lease_seconds=30)
    assert queue.complete(job.lease, {"loss": 0.5}) is JobStatus.SUCCEEDED

    with pytest.raises(LeaseLost):
        queue.complete(job.lease, {"loss": 9.9})
    with pytest.raises(LeaseLost):
        store.write_for_run(job.lease, [Metrics({"epoch": 9})])

    record = store.get(job_id)
    assert (record.status, record.result) == (JobStatus.SUCCEEDED, {"loss": 0.5})
    assert store.metrics(job_id) == []


def test_reject_fails_a_queued_job_that_can_never_run(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec(gpus=8, cpus=8))
    queue.claim("worker", 30, fits=Resources(cpus=1, gpus=0))  # leaves it waiting

    queue.reject(job_id, "needs 8 GPUs, the whole cluster has 4")

    record = store.get(job_id)
    assert (record.status, record.last_error) == (
        JobStatus.FAILED,
        "needs 8 GPUs, the whole cluster has 4",
    )
    assert record.status.is_final and record.finished_at is not None
    assert queue.queued() == []
    with pytest.raises(InvalidTransition, match="it is failed; reject needs a queued job"):
        queue.reject(job_id, "again")


def test_only_queued_and_running_are_not_final() -> None:
    assert [status for status in JobStatus if not status.is_final] == [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
    ]


def test_pending_reason_shows_on_record_until_claimed(queue: JobQueue, store: JobStore) -> None:
    job_id = queue.submit(make_spec(gpus=4))

    queue.set_pending_reason(job_id, "needs 4 GPUs, 2 free, 0 jobs ahead")

    assert store.get(job_id).pending_reason == "needs 4 GPUs, 2 free, 0 jobs ahead"
    queue.claim("worker", lease_seconds=30)
    assert store.get(job_id).pending_reason is None


def test_queue_survives_redis_sigkill_and_restart_from_aof(
    redis_process: Callable[..., RedisProcess],
) -> None:
    """1,000 queued jobs outlive a SIGKILL of redis-server, in their order.

    The server runs the embedded one's `appendfsync everysec`, and the test waits 1.5 s before
    the kill: everysec fsyncs within a second, so after the wait the jobs are on disk and would
    survive even a machine crash, which is the guarantee genfleet documents. (A SIGKILL of the
    process alone keeps whatever Redis already wrote to the file, fsynced or not.)
    """
    server = redis_process(appendfsync="everysec")
    queue = JobQueue(server.client())
    submitted = [
        (index % 10, queue.submit(make_spec(priority=index % 10))) for index in range(1000)
    ]
    expected = [job_id for _, job_id in sorted(submitted, key=lambda pair: -pair[0])]
    time.sleep(1.5)

    server.kill()
    server.start()

    restarted = JobQueue(server.client())
    assert restarted.queued(limit=2000) == expected
    assert JobStore(server.client()).counts_by_status()[JobStatus.QUEUED] == 1000
    first = restarted.claim("worker", lease_seconds=30)  # scripts reload after the restart
    assert (first.job_id, first.attempt, first.spec) == (expected[0], 1, make_spec(priority=9))
