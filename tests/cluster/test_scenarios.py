"""Genfleet issue 11's scenarios on a cluster of separate hosts: nothing lost, stuck or run twice.

(a) jobs and a sweep submitted before any worker joined succeed once workers join; (b) a
worker host killed mid-run; (c) a worker host cut off, then healed; (d) a dispatcher host cut
off from Redis for longer than a lease; (e) the Redis host restarted on its append-only file;
(f) SIGTERM on a dispatcher. After each, `assert_invariants` checks from the store, Ray's State
API and the storage: every job in exactly one final state, none failed that did not fail by
itself, each epoch's metrics recorded once, no runner left and every CPU and placement group
free.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from copy import deepcopy

import pytest

from jobs.records import JobRecord, JobStatus
from jobs.spec import validate_spec_dict
from tests.cluster.harness import Cluster, DispatcherHost, RayWorker
from tests.cluster.network import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.multihost, pytest.mark.timeout(900)]

EPOCHS = 5
# About a second each: a fault comes two epochs in, and a run stalls while it is detected.
LONG_EPOCHS = 25
RUN_SPEC = {
    "name": "scenario",
    "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
    "data": {"dataset": "digits"},
    "train": {"epochs": EPOCHS, "batch_size": 64, "max_steps_per_epoch": 6, "num_samples": 4},
    "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 3},
}
SWEEP = {
    "metric": "val_bits_per_dim",
    "mode": "min",
    "num_samples": 2,
    "max_concurrent": 1,
    "scheduler": "fifo",
    "space": {"train.lr": {"choice": [0.001, 0.003]}},
}
JOB_SECONDS = 300  # Ray Train start-up, a fault, its detection and a resume, on 2 busy cores
FREE_SECONDS = 60  # Ray's cleanup of a finished run


def submit(cluster: Cluster, name: str, sweep: bool = False, epochs: int = EPOCHS) -> str:
    spec = deepcopy(RUN_SPEC) | {"name": name}
    spec["train"]["epochs"] = epochs
    if sweep:
        spec |= {"kind": "sweep", "sweep": SWEEP}
    return cluster.queue().submit(validate_spec_dict(spec))


def wait_for(
    condition: Callable[[], object],
    seconds: float,
    what: str,
    cluster: Cluster,
    also: Callable[[], str] = str,
) -> None:
    """`wait_until` whose failure shows the cluster's logs, after what `also` says."""
    wait_until(condition, seconds, what, lambda: f"{also()}\n{cluster.logs()}")


def epochs_done(cluster: Cluster, job_id: str) -> int:
    return len(cluster.store().metrics(job_id))


def running_node(cluster: Cluster, job_id: str) -> str | None:
    """The Ray node the job's rank 0 runs on, as its dispatcher publishes it."""
    status = cluster.store().cluster_status() or {}
    nodes = status.get("running_jobs", {}).get(job_id) or []
    return nodes[0] if nodes else None


def worker_running(cluster: Cluster, job_id: str) -> RayWorker:
    wait_for(lambda: running_node(cluster, job_id), JOB_SECONDS, f"{job_id} on a node", cluster)
    node = running_node(cluster, job_id)
    return next(worker for worker in cluster.workers if worker.node_id == node)


def wait_all_final(cluster: Cluster, job_ids: list[str]) -> list[JobRecord]:
    return [cluster.wait_final(job_id, timeout=JOB_SECONDS) for job_id in job_ids]


def resources_in_use(cluster: Cluster) -> tuple[list[str], list[str]]:
    """Live JobRunner actors and placement groups that still hold resources."""
    runners = [
        actor["name"]
        for actor in cluster.head.state("actors") or []
        if actor.get("class_name") == "JobRunner" and actor.get("state") == "ALIVE"
    ]
    groups = [
        group["placement_group_id"]
        for group in cluster.head.state("placement_groups") or []
        if group.get("state") in ("CREATED", "PENDING", "RESCHEDULING")
    ]
    return runners, groups


def held_resources(cluster: Cluster) -> list[dict[str, object]]:
    """What Ray's State API says of each runner and placement group still held."""
    runners, groups = resources_in_use(cluster)
    fields = ("name", "class_name", "state", "job_id", "placement_group_id", "node_id")
    actors = [
        {field: actor.get(field) for field in fields}
        for actor in cluster.head.state("actors") or []
        if actor.get("name") in runners or actor.get("placement_group_id") in groups
    ]
    placement = [
        {field: group.get(field) for field in ("placement_group_id", "creator_job_id", "state")}
        for group in cluster.head.state("placement_groups") or []
        if group.get("placement_group_id") in groups
    ]
    return actors + placement


def assert_invariants(cluster: Cluster, records: list[JobRecord]) -> None:
    store = cluster.store()
    for record in records:
        context = f"{record.id}: {record.last_error}\n{cluster.logs()}"
        assert record.status == JobStatus.SUCCEEDED, context  # none failed by itself
        assert record.attempts == 1, context  # every fault was an interruption, not a failure
        finals = [event for event in store.events(record.id) if event.status.is_final]
        assert len(finals) == 1, finals
        for trial in [None, *(info["trial_id"] for info in store.trials(record.id))]:
            if record.kind == "sweep" and trial is None:
                continue
            epochs = [row["epoch"] for row in store.metrics(record.id, trial=trial)]
            assert epochs == list(range(1, len(epochs) + 1)) and epochs, (trial, epochs)
    wait_for(
        lambda: resources_in_use(cluster) == ([], []),
        FREE_SECONDS,
        "no runner and no placement group left",
        cluster,
        also=lambda: f"left: {held_resources(cluster)}",
    )


def test_a_jobs_and_a_sweep_submitted_before_any_worker_succeed_once_workers_join(
    cluster: Cluster,
) -> None:
    cluster.add_dispatcher()
    cluster.add_dispatcher()
    jobs = [submit(cluster, "early-1"), submit(cluster, "early-2")]
    jobs.append(submit(cluster, "early-sweep", sweep=True, epochs=2))

    def all_wait_for_nodes() -> bool:
        records = cluster.store().get_many(jobs)
        return all((r.pending_reason or "").startswith("waiting for nodes") for r in records)

    wait_for(all_wait_for_nodes, 60, "every job to wait for nodes", cluster)
    assert {r.status for r in cluster.store().get_many(jobs)} == {JobStatus.QUEUED}

    cluster.add_worker(cpus=1)
    cluster.add_worker(cpus=1)
    records = wait_all_final(cluster, jobs)
    assert_invariants(cluster, records)
    assert {r.claims for r in records} == {1}


def run_on_one_of_two_workers(cluster: Cluster, name: str) -> tuple[str, RayWorker]:
    """A long job two epochs into its run, and the worker host it runs on."""
    cluster.add_worker(cpus=1)
    cluster.add_worker(cpus=1)
    cluster.add_dispatcher()
    job_id = submit(cluster, name, epochs=LONG_EPOCHS)
    victim = worker_running(cluster, job_id)
    wait_for(lambda: epochs_done(cluster, job_id) >= 2, JOB_SECONDS, "two epochs", cluster)
    return job_id, victim


def test_b_worker_host_killed_mid_run_resumes_from_its_checkpoint_on_another_host(
    cluster: Cluster,
) -> None:
    job_id, victim = run_on_one_of_two_workers(cluster, "node-lost")

    victim.host.kill_all()
    cluster.head.wait_until_dead({victim.node_id})

    (record,) = wait_all_final(cluster, [job_id])
    assert_invariants(cluster, [record])
    assert victim.node_id not in record.result["nodes"]
    assert "resumed from" in "\n".join(cluster.store().logs(job_id, tail=500))


def test_c_worker_host_cut_off_then_healed_loses_nothing(cluster: Cluster) -> None:
    job_id, victim = run_on_one_of_two_workers(cluster, "node-cut")

    victim.host.cut()
    cluster.head.wait_until_dead({victim.node_id})
    victim.host.heal()

    (record,) = wait_all_final(cluster, [job_id])
    assert_invariants(cluster, [record])
    assert victim.node_id not in record.result["nodes"]


def long_job_under_one_of_two_dispatchers(
    cluster: Cluster, name: str
) -> tuple[str, DispatcherHost, DispatcherHost]:
    """A long job two epochs into its run; the dispatcher that claimed it, and the other one."""
    cluster.add_worker(cpus=2)
    dispatchers = [cluster.add_dispatcher(), cluster.add_dispatcher()]
    job_id = submit(cluster, name, epochs=LONG_EPOCHS)
    wait_for(lambda: epochs_done(cluster, job_id) >= 2, JOB_SECONDS, "two epochs", cluster)
    owner = cluster.store().get(job_id).owner
    (first,) = [d for d in dispatchers if d.dispatcher_id == owner]
    (second,) = [d for d in dispatchers if d is not first]
    return job_id, first, second


def test_d_dispatcher_cut_off_from_redis_past_its_lease_is_replaced_and_writes_nothing(
    cluster: Cluster,
) -> None:
    job_id, first, second = long_job_under_one_of_two_dispatchers(cluster, "partitioned")

    cluster.redis.host.cut(first.host)
    wait_for(
        lambda: cluster.store().get(job_id).owner == second.dispatcher_id,
        JOB_SECONDS,
        "the second dispatcher to take the job over",
        cluster,
    )
    time.sleep(first.lease_seconds)  # the first one, still cut off, has stopped its copy
    cluster.redis.host.heal(first.host)

    (record,) = wait_all_final(cluster, [job_id])
    assert_invariants(cluster, [record])  # one row per epoch: no write of the first landed
    assert (record.claims, record.interruptions) == (2, 1)
    assert record.owner == second.dispatcher_id
    # It stopped its copy itself while cut off, when its lease lapsed on its own clock.
    stopped = f"could not renew the lease for {first.lease_seconds:g} s; killing our copy"
    assert stopped in first.host.log_tail("dispatcher", lines=400)


def test_e_redis_host_restarted_on_its_append_only_file_loses_no_job(cluster: Cluster) -> None:
    cluster.add_worker(cpus=2)
    cluster.add_dispatcher()
    jobs = [
        submit(cluster, "redis-restart-1", epochs=LONG_EPOCHS),
        submit(cluster, "redis-restart-2"),
    ]
    wait_for(lambda: epochs_done(cluster, jobs[0]) >= 2, JOB_SECONDS, "two epochs", cluster)

    cluster.redis.host.kill_all()
    time.sleep(2)
    cluster.redis.start()

    records = wait_all_final(cluster, jobs)
    assert_invariants(cluster, records)


def test_f_sigterm_on_a_dispatcher_hands_its_job_to_the_other_without_an_attempt(
    cluster: Cluster,
) -> None:
    job_id, first, second = long_job_under_one_of_two_dispatchers(cluster, "handed-back")

    os.kill(dispatcher_pid(first), signal.SIGTERM)

    (record,) = wait_all_final(cluster, [job_id])
    assert_invariants(cluster, [record])
    assert (record.claims, record.interruptions) == (2, 0)
    assert record.owner == second.dispatcher_id
    messages = [event.message for event in cluster.store().events(job_id)]
    assert f"handed back: dispatcher {first.dispatcher_id} stopped" in messages


def dispatcher_pid(dispatcher: DispatcherHost) -> int:
    """Its id is "<host>-<pid>", the pid of the `genfleet dispatcher` the harness started."""
    assert dispatcher.dispatcher_id is not None
    return int(dispatcher.dispatcher_id.rsplit("-", 1)[1])
