"""Plain-words reasons for jobs that can never run, and for jobs that wait (for nodes, or for
others to finish); the declared largest cluster (GENFLEET_MAX_CLUSTER) and the demand sent to
Ray's autoscaler."""

from __future__ import annotations

import math

import pytest
import redis

from cluster.autoscaling import demand_for
from cluster.placement import (
    judge_queued_jobs,
    largest_cluster,
    never_fits_reason,
    pending_reason,
    why_waiting,
)
from cluster.ray_runtime import ClusterResources
from jobs.limits import LimitError
from jobs.queue import JobQueue, Resources
from jobs.records import JobRecord
from jobs.scheduling import Demand
from jobs.settings import MaxCluster, Settings
from jobs.spec import validate_spec_dict
from jobs.store import JobStore

FOUR_CPUS = ClusterResources(cpus=4, gpus=0, largest_node_cpus=2, largest_node_gpus=0)
NO_NODES = ClusterResources(cpus=0, gpus=0, largest_node_cpus=0, largest_node_gpus=0)
UNBOUNDED = largest_cluster(MaxCluster())


def test_a_job_larger_than_the_declared_cluster_is_told_what_it_needs_and_the_bound() -> None:
    reason = never_fits_reason(Resources(cpus=8, gpus=0), {"num_workers": 8}, FOUR_CPUS)
    assert reason == "needs 8 CPUs, the cluster has at most 4 CPUs (GENFLEET_MAX_CLUSTER)"


def test_a_sweep_too_wide_for_the_declared_cluster_is_told_how_many_trials_at_once_fit() -> None:
    scaling = {"num_workers": 2, "cpus_per_worker": 1}
    reason = never_fits_reason(Resources(cpus=6, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == (
        "needs 6 CPUs, the cluster has at most 4 CPUs (GENFLEET_MAX_CLUSTER); a trial needs 2 "
        "CPUs: set sweep.max_concurrent to 2 or less"
    )


def test_a_sweep_beyond_a_gpu_bound_with_no_cpu_bound_is_told_the_concurrency_that_fits() -> None:
    largest = largest_cluster(MaxCluster(gpus=4))
    scaling = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1}
    reason = never_fits_reason(Resources(cpus=6, gpus=6), scaling, largest, is_sweep=True)
    assert reason == (
        "needs 6 GPUs, the cluster has at most 4 GPUs (GENFLEET_MAX_CLUSTER); a trial needs "
        "1 CPU and 1 GPU: set sweep.max_concurrent to 4 or less"
    )


def test_a_sweep_whose_single_trial_cannot_fit_gets_no_concurrency_advice() -> None:
    scaling = {"num_workers": 3, "cpus_per_worker": 2}
    reason = never_fits_reason(Resources(cpus=12, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == "needs 12 CPUs, the cluster has at most 4 CPUs (GENFLEET_MAX_CLUSTER)"


def test_a_worker_larger_than_any_declared_node_is_named_even_when_the_total_fits() -> None:
    scaling = {"num_workers": 1, "cpus_per_worker": 3}
    reason = never_fits_reason(Resources(cpus=3, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == "needs 3 CPUs per worker, a node has at most 2 CPUs (GENFLEET_MAX_CLUSTER)"


def test_without_a_declared_bound_nothing_is_ever_too_big() -> None:
    scaling = {"num_workers": 64, "use_gpu": True, "gpus_per_worker": 8, "cpus_per_worker": 64}
    needs = Resources(cpus=64 * 64, gpus=64 * 8)
    assert never_fits_reason(needs, scaling, UNBOUNDED, is_sweep=True) is None


def test_a_job_beyond_the_cluster_of_the_moment_waits_for_nodes() -> None:
    scaling = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1}
    wait = why_waiting(Resources(cpus=1, gpus=1), scaling, NO_NODES, Resources(0, 0), 0)
    assert wait.reason == "waiting for nodes: needs 1 GPU; the cluster has 0 GPUs"
    assert wait.timed_out(600) == "waited 600 s for nodes: needs 1 GPU; the cluster has 0 GPUs"


def test_a_worker_larger_than_every_node_of_the_moment_waits_for_a_larger_node() -> None:
    scaling = {"num_workers": 1, "cpus_per_worker": 3}
    wait = why_waiting(Resources(cpus=3, gpus=0), scaling, FOUR_CPUS, Resources(4, 0), 0)
    assert wait.reason == "waiting for nodes: needs 3 CPUs per worker; the largest node has 2 CPUs"


def test_a_job_that_fits_once_others_finish_waits_with_the_reason() -> None:
    needs = Resources(cpus=2, gpus=0)
    wait = why_waiting(needs, {"num_workers": 2}, FOUR_CPUS, Resources(cpus=1, gpus=0), 3)
    assert wait.reason == "needs 2 CPUs, 1 free, 3 jobs ahead"
    assert wait.timed_out(30) == "waited 30 s: needs 2 CPUs, 1 free, 3 jobs ahead"
    assert pending_reason(needs, Resources(cpus=4, gpus=0), 0) == (
        "fits; waiting for a dispatcher to claim it"
    )


# GENFLEET_MAX_CLUSTER


def test_max_cluster_reads_any_subset_of_its_bounds() -> None:
    assert MaxCluster.parse("") == MaxCluster()
    assert MaxCluster.parse(" cpus=64, gpus=8,node_cpus=16 ,node_gpus=2 ") == MaxCluster(
        cpus=64, gpus=8, node_cpus=16, node_gpus=2
    )
    assert MaxCluster.parse("gpus=0") == MaxCluster(gpus=0)
    assert MaxCluster.parse("gpus=0.5,cpus=3").as_text() == "cpus=3,gpus=0.5"
    assert largest_cluster(MaxCluster(gpus=2)) == ClusterResources(
        cpus=math.inf, gpus=2, largest_node_cpus=math.inf, largest_node_gpus=math.inf
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpu=8", "GENFLEET_MAX_CLUSTER: expected key=number pairs with keys cpus, gpus, node_cpus, node_gpus, got 'gpu=8'"),
        ("cpus", "GENFLEET_MAX_CLUSTER: expected key=number pairs with keys cpus, gpus, node_cpus, node_gpus, got 'cpus'"),
        ("cpus=many", "GENFLEET_MAX_CLUSTER: cpus must be a number >= 0, got 'many'"),
        ("gpus=-1", "GENFLEET_MAX_CLUSTER: gpus must be a number >= 0, got '-1'"),
        ("gpus=inf", "GENFLEET_MAX_CLUSTER: gpus must be a number >= 0, got 'inf'"),
        ("cpus=4,cpus=8", "GENFLEET_MAX_CLUSTER: cpus given twice in 'cpus=4,cpus=8'"),
    ],
)  # fmt: skip
def test_a_bad_max_cluster_is_one_error_naming_the_variable(
    text: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_MAX_CLUSTER", text)
    with pytest.raises(LimitError) as caught:
        Settings.from_env()
    assert str(caught.value) == expected


def test_settings_carry_the_declared_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFLEET_MAX_CLUSTER", "gpus=8,node_gpus=2")
    assert Settings.from_env().max_cluster == MaxCluster(gpus=8, node_gpus=2)
    monkeypatch.delenv("GENFLEET_MAX_CLUSTER")
    assert Settings.from_env().max_cluster == MaxCluster()


# Verdicts and demand over records the real queue wrote


@pytest.fixture
def records(redis_client: redis.Redis):
    queue, store = JobQueue(redis_client, "placement"), JobStore(redis_client, "placement")

    def submitted(**sections: object) -> JobRecord:
        spec = {"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}, **sections}
        return store.get(queue.submit(validate_spec_dict(spec)))

    return submitted


ONE_GPU = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1}


def test_a_job_fails_once_it_waited_its_wait_timeout_and_not_before(records) -> None:
    record = records(scaling=ONE_GPU, scheduling={"wait_timeout": 600})
    free = Resources(0, 0)
    [early] = judge_queued_jobs([record], NO_NODES, free, UNBOUNDED, record.updated_at + 599)
    assert (early.rejected, early.reason) == (
        False,
        "waiting for nodes: needs 1 GPU; the cluster has 0 GPUs",
    )
    [late] = judge_queued_jobs([record], NO_NODES, free, UNBOUNDED, record.updated_at + 600)
    assert (late.rejected, late.reason) == (
        True,
        "waited 600 s for nodes: needs 1 GPU; the cluster has 0 GPUs",
    )


def test_jobs_ahead_count_only_the_jobs_still_waiting(records) -> None:
    cluster = ClusterResources(cpus=4, gpus=0, largest_node_cpus=4, largest_node_gpus=0)
    never, first, second = records(scaling=ONE_GPU), records(), records()
    largest = largest_cluster(MaxCluster(gpus=0))
    verdicts = judge_queued_jobs([never, first, second], cluster, Resources(0, 0), largest, 0)
    assert [(verdict.rejected, verdict.reason) for verdict in verdicts] == [
        (True, "needs 1 GPU, the cluster has at most 0 GPUs (GENFLEET_MAX_CLUSTER)"),
        (False, "needs 1 CPU, 0 free"),
        (False, "needs 1 CPU, 0 free, 1 job ahead"),
    ]


def test_demand_holds_the_running_and_the_waiting_workers_within_the_declared_cluster(
    records,
) -> None:
    running = records(scaling={"num_workers": 2, "cpus_per_worker": 2})
    gpu_job = records(scaling={**ONE_GPU, "num_workers": 2})
    too_many = records(scaling={"num_workers": 1, "cpus_per_worker": 8})
    sweep = records(
        kind="sweep",
        sweep={"max_concurrent": 2, "space": {"train.lr": {"choice": [0.1, 0.2]}}},
    )
    bundles, job_ids = demand_for(
        [running], [gpu_job, too_many, sweep], MaxCluster(cpus=10, gpus=2)
    )
    assert job_ids == [gpu_job.id, sweep.id]  # 8 more CPUs would pass cpus=10
    demand = Demand.grouped(bundles, job_ids, sent_at=0.0, dispatcher="d")
    assert [(entry.bundle, entry.count) for entry in demand.bundles] == [
        ({"CPU": 1.0}, 2),  # the sweep's two concurrent trials
        ({"CPU": 1.0, "GPU": 1.0}, 2),
        ({"CPU": 2.0}, 2),  # the running job stays in the request: it is a target size
    ]
    assert demand.describe() == "8 CPUs and 2 GPUs (6 bundles) for 2 waiting jobs"
    assert Demand.from_json(demand.as_json()) == demand


def test_no_demand_while_nothing_waits_or_no_waiting_job_fits_the_declared_cluster(
    records,
) -> None:
    running = records(scaling={"num_workers": 4})
    assert demand_for([running], [], MaxCluster()) == ([], [])
    assert demand_for([running], [records()], MaxCluster(cpus=4)) == ([], [])
    withdrawn = Demand.grouped([], [], sent_at=0.0, dispatcher="d")
    assert withdrawn.describe() == "nothing: no waiting job to make room for"
