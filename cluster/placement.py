"""Whether a job fits the cluster, in plain words for the people waiting on it."""

from __future__ import annotations

from typing import Any

from cluster.ray_runtime import ClusterResources
from jobs.queue import Resources
from jobs.spec import ScalingSpec

__all__ = ["Resources", "never_fits_reason", "pending_reason"]


def never_fits_reason(
    needs: Resources, scaling: dict[str, Any], cluster: ClusterResources, is_sweep: bool = False
) -> str | None:
    """Why a job can never run on this cluster, or None if it could once others finish."""
    too_big = _beyond_cluster(needs, cluster)
    worker_too_big = _beyond_largest_node(scaling, cluster)
    one_trial_fits = not worker_too_big and not _beyond_cluster(_one_run(scaling), cluster)
    if too_big and is_sweep and one_trial_fits:
        return f"{too_big}; {_concurrency_that_fits(scaling, cluster)}"
    return too_big or worker_too_big


def _beyond_cluster(needs: Resources, cluster: ClusterResources) -> str | None:
    if needs.gpus > cluster.gpus:
        return f"needs {_count(needs.gpus, 'GPU')}, the cluster has {_count(cluster.gpus, 'GPU')}"
    if needs.cpus > cluster.cpus:
        return f"needs {_count(needs.cpus, 'CPU')}, the cluster has {_count(cluster.cpus, 'CPU')}"
    return None


def _beyond_largest_node(scaling: dict[str, Any], cluster: ClusterResources) -> str | None:
    per_worker_cpus = float(scaling.get("cpus_per_worker", 1.0))
    if per_worker_cpus > cluster.largest_node_cpus:
        return (
            f"needs {_count(per_worker_cpus, 'CPU')} per worker, the largest node has "
            f"{_count(cluster.largest_node_cpus, 'CPU')}"
        )
    if scaling.get("use_gpu"):
        per_worker_gpus = float(scaling.get("gpus_per_worker", 1.0))
        if per_worker_gpus > cluster.largest_node_gpus:
            return (
                f"needs {_count(per_worker_gpus, 'GPU')} per worker, the largest node has "
                f"{_count(cluster.largest_node_gpus, 'GPU')}"
            )
    return None


def _one_run(scaling: dict[str, Any]) -> Resources:
    run = ScalingSpec.model_validate(scaling)  # stored from a validated spec
    return Resources(cpus=run.cpus, gpus=run.gpus)


def _concurrency_that_fits(scaling: dict[str, Any], cluster: ClusterResources) -> str:
    """A sweep too wide for the cluster whose single trial fits: how many trials at once do."""
    run = _one_run(scaling)
    fits = int(cluster.cpus // run.cpus)
    if run.gpus:
        fits = min(fits, int(cluster.gpus // run.gpus))
    trial = _count(run.cpus, "CPU") + (f" and {_count(run.gpus, 'GPU')}" if run.gpus else "")
    return f"a trial needs {trial}: set sweep.max_concurrent to {fits} or less"


def pending_reason(needs: Resources, free: Resources, jobs_ahead: int) -> str:
    """'needs 4 GPUs, 2 free, 3 jobs ahead' — what a waiting job waits for."""
    if needs.gpus > free.gpus:
        short = f"needs {_count(needs.gpus, 'GPU')}, {_number(free.gpus)} free"
    elif needs.cpus > free.cpus:
        short = f"needs {_count(needs.cpus, 'CPU')}, {_number(free.cpus)} free"
    else:
        short = "fits; waiting for a dispatcher to claim it"
    if jobs_ahead:
        short += f", {jobs_ahead} job{'s' if jobs_ahead != 1 else ''} ahead"
    return short


def _number(value: float) -> str:
    return f"{value:g}"


def _count(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"
