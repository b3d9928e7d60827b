"""A worker group Ray Train replaced, whose messages Ray delivers late, writes nothing.

Its node was cut off while it still had messages to send; once the network heals they reach
the relay, after the new group's (scenario (c) of tests/cluster met an old epoch's row that
rewound the curve). The dispatcher keeps only what the newest group of each trial sends, and
asks Ray when a group it has not seen before announces itself late.
"""

from __future__ import annotations

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from cluster.dispatcher import ActiveJob
from cluster.placement import Resources
from jobs.messages import Checkpoint, Log, Metrics, TrialUpdate, Worker
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
        Worker(0, 11, "node-a", "group-a"),
        Metrics({"epoch": 7}, group="group-a"),
        Worker(0, 12, "node-b", "group-b"),  # Ray Train restarted the run on another node
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


@pytest.mark.ray
def test_a_late_worker_of_a_group_ray_removed_does_not_take_over(local_ray: str) -> None:
    """Its own `Worker` was still unsent when its node was cut off: it arrives after the new
    group's, and only Ray knows that group is gone (Ray Train removed its placement group)."""
    gone = placement_group([{"CPU": 0.01}])
    ray.get(gone.ready(), timeout=60)
    remove_placement_group(gone)
    live = placement_group([{"CPU": 0.01}])
    ray.get(live.ready(), timeout=60)
    try:
        job = active_job()
        arrived = [
            Worker(0, 12, "node-b", live.id.hex()),
            Metrics({"epoch": 8}, group=live.id.hex()),
            Worker(0, 11, "node-a", gone.id.hex()),
            Metrics({"epoch": 5}, group=gone.id.hex()),
            Metrics({"epoch": 9}, group=live.id.hex()),
        ]
        kept = [message for message in arrived if job.from_current_workers(message)]
        assert kept == [arrived[0], arrived[1], arrived[4]]
    finally:
        remove_placement_group(live)
