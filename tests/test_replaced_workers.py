"""A worker group Ray Train replaced, whose messages Ray delivers late, writes nothing.

Its node was cut off while it still had messages to send; once the network heals they reach
the relay, after the new group's (scenario (c) of tests/cluster met an old epoch's row that
rewound the curve). The dispatcher keeps only what the group of each trial started last sends.
"""

from __future__ import annotations

from cluster.dispatcher import ActiveJob
from jobs.messages import Checkpoint, Fatal, Log, Metrics, TrialUpdate, Unrecoverable, Worker
from jobs.queue import Resources
from jobs.records import Lease
from jobs.spec import validate_spec_dict
from tests.test_ray_jobs import digits_spec


def active_job() -> ActiveJob:
    spec = validate_spec_dict(digits_spec())
    lease = Lease("job-1", "dispatcher-1", 1)
    return ActiveJob(lease, None, None, None, Resources(1, 0), spec, attempt=1)


def test_messages_of_a_replaced_group_are_dropped_and_the_newest_group_is_kept() -> None:
    job = active_job()
    old = Metrics({"epoch": 8}, group="group-a")
    arrived = [
        Worker(0, 11, "node-a", "group-a", started_at=100.0),
        Metrics({"epoch": 7}, group="group-a"),
        Worker(
            0, 12, "node-b", "group-b", started_at=200.0
        ),  # Ray Train restarted the run on another node
        Metrics({"epoch": 8}, group="group-b"),
        old,  # sent before the cut, delivered after the heal
        Checkpoint(8, "/storage/job-1/claim-1/epoch-0008", group="group-a"),
        Log("from the cut-off node", group="group-a"),
        Log("from the runner"),  # not a worker's: always kept
        Metrics({"epoch": 9}, group="group-b"),
    ]
    kept = [message for message in arrived if job.from_current_workers(message)]
    assert kept == [
        arrived[0],
        arrived[1],
        arrived[2],
        arrived[3],
        Log("from the runner"),
        arrived[-1],
    ]
    assert old not in kept


def test_each_trial_keeps_its_own_newest_group() -> None:
    job = active_job()
    arrived = [
        Worker(0, 11, "node-a", "group-a", trial="t1"),
        Worker(0, 12, "node-b", "group-b", trial="t2"),
        Metrics({"epoch": 1}, trial="t1", group="group-a"),
        Metrics({"epoch": 1}, trial="t2", group="group-b"),
        Metrics({"epoch": 1}, trial="t2", group="group-a"),  # t1's group, wrongly for t2
        TrialUpdate("t1", {"status": "running"}),
    ]
    kept = [message for message in arrived if job.from_current_workers(message)]
    assert kept == arrived[:4] + arrived[5:]


def test_a_late_worker_of_a_group_started_earlier_does_not_take_over() -> None:
    """Its own `Worker` was still unsent when its node was cut off: it arrives after the new
    group's, and only when it started tells the two apart."""
    job = active_job()
    arrived = [
        Worker(0, 12, "node-b", "group-b", started_at=200.0),
        Metrics({"epoch": 8}, group="group-b"),
        Worker(0, 11, "node-a", "group-a", started_at=100.0),
        Metrics({"epoch": 5}, group="group-a"),
        Metrics({"epoch": 9}, group="group-b"),
    ]
    kept = [message for message in arrived if job.from_current_workers(message)]
    assert kept == [arrived[0], arrived[1], arrived[4]]


def test_the_newest_group_counts_even_when_its_messages_are_drained_late() -> None:
    """Drained after its run ended (a Redis outage held the drains back), the newest group
    still counts: the time it started says so, not whether Ray still holds its group."""
    job = active_job()
    arrived = [
        Worker(0, 11, "node-a", "group-a", started_at=100.0),
        Worker(0, 12, "node-b", "group-b", started_at=200.0),
        Metrics({"epoch": 9}, group="group-b"),
        Fatal("NonFiniteLossError: loss is nan", group="group-b"),
    ]
    kept = [message for message in arrived if job.from_current_workers(message)]
    assert kept == arrived


def test_an_unrecoverable_error_fails_the_run_for_good_and_is_told_once() -> None:
    job = active_job()
    assert not job.fails_for_good  # nothing said: a failure is retried
    failing = Unrecoverable("DatasetError: cannot read image /data/pets/broken.jpg")
    assert [job.is_news(failing), job.is_news(failing)] == [True, False]  # from rank 0, rank 1
    assert job.fails_for_good


def test_a_sweep_fails_for_good_only_when_every_trial_it_ran_did() -> None:
    job = active_job()
    for trial in ("t1", "t2"):
        assert job.is_news(TrialUpdate(trial, {"status": "running"}))
    job.is_news(Unrecoverable("SpecError: train.lr: must be > 0, got -1.0", trial="t1"))
    assert not job.fails_for_good  # t2 may have failed for a reason a retry does not repeat
    job.is_news(Unrecoverable("SpecError: train.lr: must be > 0, got -2.0", trial="t2"))
    assert job.fails_for_good


def test_a_run_that_stopped_itself_is_not_what_decides_a_retry() -> None:
    job = active_job()
    assert job.is_news(Fatal("NonFiniteLossError: loss is nan", trial="t1"))
    assert not job.fails_for_good  # one trial diverged; the sweep goes on without it
