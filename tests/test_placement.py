"""Plain-words reasons for jobs that cannot run on the cluster, or must wait."""

from __future__ import annotations

from cluster.placement import Resources, never_fits_reason, pending_reason
from cluster.ray_runtime import ClusterResources

FOUR_CPUS = ClusterResources(cpus=4, gpus=0, largest_node_cpus=2, largest_node_gpus=0)


def test_a_job_larger_than_the_cluster_is_told_what_it_needs_and_what_there_is() -> None:
    reason = never_fits_reason(Resources(cpus=8, gpus=0), {"num_workers": 8}, FOUR_CPUS)
    assert reason == "needs 8 CPUs, the cluster has 4 CPUs"


def test_a_sweep_too_wide_for_the_cluster_is_told_how_many_trials_at_once_fit() -> None:
    scaling = {"num_workers": 2, "cpus_per_worker": 1}
    reason = never_fits_reason(Resources(cpus=6, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == (
        "needs 6 CPUs, the cluster has 4 CPUs; a trial needs 2 CPUs: "
        "set sweep.max_concurrent to 2 or less"
    )


def test_a_sweep_whose_single_trial_cannot_fit_gets_no_concurrency_advice() -> None:
    scaling = {"num_workers": 3, "cpus_per_worker": 2}
    reason = never_fits_reason(Resources(cpus=12, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == "needs 12 CPUs, the cluster has 4 CPUs"


def test_a_worker_larger_than_every_node_is_named_even_when_the_total_fits() -> None:
    scaling = {"num_workers": 1, "cpus_per_worker": 3}
    reason = never_fits_reason(Resources(cpus=3, gpus=0), scaling, FOUR_CPUS, is_sweep=True)
    assert reason == "needs 3 CPUs per worker, the largest node has 2 CPUs"


def test_a_job_that_fits_once_others_finish_waits_with_the_reason() -> None:
    needs = Resources(cpus=2, gpus=0)
    assert never_fits_reason(needs, {"num_workers": 2}, FOUR_CPUS) is None
    assert (
        pending_reason(needs, Resources(cpus=1, gpus=0), 3) == "needs 2 CPUs, 1 free, 3 jobs ahead"
    )
