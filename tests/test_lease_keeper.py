"""The lease keeper renews on time and reports a lost lease once, even while Redis hangs.

A real `redis-server` for each test; `CLIENT PAUSE` makes it hang as a partition does: commands
are accepted and not answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cluster.lease_keeper import LeaseKeeper
from jobs.queue import JobQueue
from jobs.records import Lease
from jobs.store import JobStore
from tests.redis_fixtures import RedisProcess
from tests.test_queue import make_spec

LEASE_SECONDS = 1.5


class Reports:
    """What the keeper reported through `on_lost`, and when."""

    def __init__(self) -> None:
        self.lost: list[tuple[str, str, float]] = []
        self.arrived = threading.Event()

    def __call__(self, lease: Lease, reason: str) -> None:
        self.lost.append((lease.job_id, reason, time.monotonic()))
        self.arrived.set()


@pytest.fixture
def queue(redis_process: Callable[..., RedisProcess]) -> JobQueue:
    return JobQueue(redis_process().client())


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def keeper(queue: JobQueue, reports: Reports) -> Iterator[LeaseKeeper]:
    keeper = LeaseKeeper(queue, LEASE_SECONDS, on_lost=reports)
    keeper.start()
    yield keeper
    keeper.stop()


def claimed(queue: JobQueue, keeper: LeaseKeeper) -> Lease:
    queue.submit(make_spec())
    sent = time.monotonic()
    claim = queue.claim("d-1", LEASE_SECONDS)
    assert claim is not None
    keeper.hold(claim.lease, sent)
    return claim.lease


def test_a_held_lease_is_renewed_for_many_periods(
    queue: JobQueue, keeper: LeaseKeeper, reports: Reports
) -> None:
    lease = claimed(queue, keeper)
    first_deadline = JobStore(queue.redis).get(lease.job_id).lease_deadline
    time.sleep(3 * LEASE_SECONDS)
    assert JobStore(queue.redis).get(lease.job_id).lease_deadline > first_deadline
    assert (keeper.lost(lease.job_id), reports.lost) == (None, [])
    assert queue.expired() == []


def test_a_lease_lapses_on_time_while_its_renewal_hangs(
    queue: JobQueue, keeper: LeaseKeeper, reports: Reports
) -> None:
    lease = claimed(queue, keeper)
    time.sleep(LEASE_SECONDS / 2)
    pause_seconds = 6 * LEASE_SECONDS
    queue.redis.execute_command("CLIENT", "PAUSE", int(pause_seconds * 1000), "ALL")
    paused_at = time.monotonic()

    assert reports.arrived.wait(pause_seconds), "no report while Redis hung"
    ((job_id, reason, at),) = reports.lost
    assert job_id == lease.job_id and reason == "could not renew the lease for 1.5 s"
    # The last renewal went through at most a third of a lease before the pause.
    assert at - paused_at < LEASE_SECONDS + LEASE_SECONDS / 6
    assert keeper.lost(lease.job_id) == reason
    time.sleep(pause_seconds - (time.monotonic() - paused_at) + LEASE_SECONDS)
    assert len(reports.lost) == 1  # once, though renewals went on failing


def test_a_lease_another_dispatcher_took_is_reported_as_taken(
    queue: JobQueue, keeper: LeaseKeeper, reports: Reports
) -> None:
    lease = claimed(queue, keeper)
    queue.release(lease, "taken over by the test")
    assert queue.claim("d-2", 300) is not None

    assert reports.arrived.wait(2 * LEASE_SECONDS)
    assert reports.lost == [(lease.job_id, "lost the lease; another dispatcher owns the job now",
                             reports.lost[0][2])]  # fmt: skip


def test_a_lease_let_go_is_neither_renewed_nor_reported(
    queue: JobQueue, keeper: LeaseKeeper, reports: Reports
) -> None:
    lease = claimed(queue, keeper)
    keeper.let_go(lease.job_id)
    time.sleep(2 * LEASE_SECONDS)
    assert queue.expired() == [lease.job_id]
    assert (keeper.lost(lease.job_id), reports.lost) == (None, [])


def test_a_lease_held_again_is_not_lost_for_the_answer_to_the_older_one(
    queue: JobQueue, keeper: LeaseKeeper, reports: Reports
) -> None:
    lease = claimed(queue, keeper)
    # The dispatcher hands the job back and claims it again, as after a start that failed.
    queue.release(lease, "could not start its run")
    sent = time.monotonic()
    again = queue.claim("d-1", LEASE_SECONDS)
    assert again is not None and again.lease.claim == lease.claim + 1
    keeper.hold(again.lease, sent)
    time.sleep(2 * LEASE_SECONDS)
    assert (keeper.lost(lease.job_id), reports.lost) == (None, [])
