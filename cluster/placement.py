"""Whether a job fits the cluster, in plain words for the people waiting on it.

Two clusters are in play. The largest there may ever be, declared by GENFLEET_MAX_CLUSTER,
decides what can never run: such a job fails at once, saying what it needs. The cluster of the
moment only decides what waits, since nodes may join: an autoscaler scaling a group up from
zero, a GPU node coming back. A job beyond it waits "for nodes"; one that fits it waits for
others to finish; either fails once it has waited longer than its `scheduling.wait_timeout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.ray_runtime import ClusterResources
from jobs.queue import Resources
from jobs.records import JobRecord
from jobs.scheduling import amount
from jobs.settings import MaxCluster
from jobs.spec import ScalingSpec

__all__ = [
    "Verdict",
    "Wait",
    "judge_queued_jobs",
    "largest_cluster",
    "never_fits_reason",
    "pending_reason",
    "why_waiting",
]


@dataclass(frozen=True)
class Shortfall:
    """A need beyond what a cluster offers: `needs 8 GPUs` where it has `4 GPUs`."""

    needs: str
    offered: str
    per_node: bool  # a single worker is larger than a node, whatever the total


@dataclass(frozen=True)
class Wait:
    """Why a queued job waits: for nodes the cluster lacks, or for other jobs to finish."""

    detail: str  # "needs 1 GPU; the cluster has 0 GPUs", "needs 4 GPUs, 2 free, 3 jobs ahead"
    for_nodes: bool

    @property
    def reason(self) -> str:
        return f"waiting for nodes: {self.detail}" if self.for_nodes else self.detail

    def timed_out(self, seconds: float) -> str:
        """The failure of a job that waited its whole `scheduling.wait_timeout`."""
        return f"waited {seconds:g} s{' for nodes' if self.for_nodes else ''}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    """What the dispatcher does with one queued job: fail it, or let it wait, for `reason`."""

    record: JobRecord
    reason: str
    rejected: bool = False


def largest_cluster(declared: MaxCluster) -> ClusterResources:
    """GENFLEET_MAX_CLUSTER as a cluster; a bound it leaves out is no bound."""

    def bound(value: float | None) -> float:
        return math.inf if value is None else value

    return ClusterResources(
        cpus=bound(declared.cpus),
        gpus=bound(declared.gpus),
        largest_node_cpus=bound(declared.node_cpus),
        largest_node_gpus=bound(declared.node_gpus),
    )


def judge_queued_jobs(
    queued: list[JobRecord],
    cluster: ClusterResources,
    free: Resources,
    largest: ClusterResources,
    now: float,
) -> list[Verdict]:
    """A verdict for each job at the head of the queue, in queue order.

    `now` is Unix seconds, compared with the record's `updated_at`: the last status change,
    which for a queued job is when it entered the queue (submitted, retried or handed back).
    """
    verdicts: list[Verdict] = []
    for record in queued:
        jobs_ahead = sum(not verdict.rejected for verdict in verdicts)
        verdicts.append(_judge(record, cluster, free, largest, jobs_ahead, now))
    return verdicts


def _judge(
    record: JobRecord,
    cluster: ClusterResources,
    free: Resources,
    largest: ClusterResources,
    jobs_ahead: int,
    now: float,
) -> Verdict:
    needs = Resources(cpus=record.needs_cpus, gpus=record.needs_gpus)
    scaling = record.spec.get("scaling", {})
    impossible = never_fits_reason(needs, scaling, largest, is_sweep=record.kind == "sweep")
    if impossible:
        return Verdict(record, impossible, rejected=True)
    wait = why_waiting(needs, scaling, cluster, free, jobs_ahead)
    timeout = (record.spec.get("scheduling") or {}).get("wait_timeout")
    if timeout is not None and now - record.updated_at >= timeout:
        return Verdict(record, wait.timed_out(timeout), rejected=True)
    return Verdict(record, wait.reason)


def never_fits_reason(
    needs: Resources, scaling: dict[str, Any], largest: ClusterResources, is_sweep: bool = False
) -> str | None:
    """Why a job can never run, not even on the `largest` cluster there may be, or None."""
    too_big = _beyond_cluster(needs, largest)
    worker_too_big = _beyond_largest_node(scaling, largest)
    shortfall = too_big or worker_too_big
    if shortfall is None:
        return None
    where = "a node" if shortfall.per_node else "the cluster"
    reason = f"{shortfall.needs}, {where} has at most {shortfall.offered} (GENFLEET_MAX_CLUSTER)"
    one_trial_fits = not worker_too_big and not _beyond_cluster(_one_run(scaling), largest)
    if too_big and is_sweep and one_trial_fits:
        reason += f"; {_concurrency_that_fits(scaling, largest)}"
    return reason


def why_waiting(
    needs: Resources,
    scaling: dict[str, Any],
    cluster: ClusterResources,
    free: Resources,
    jobs_ahead: int,
) -> Wait:
    """For nodes, when the job is beyond the cluster as it is now; else for others to finish."""
    shortfall = _beyond_cluster(needs, cluster) or _beyond_largest_node(scaling, cluster)
    if shortfall is None:
        return Wait(pending_reason(needs, free, jobs_ahead), for_nodes=False)
    where = "the largest node" if shortfall.per_node else "the cluster"
    return Wait(f"{shortfall.needs}; {where} has {shortfall.offered}", for_nodes=True)


def _beyond_cluster(needs: Resources, cluster: ClusterResources) -> Shortfall | None:
    if needs.gpus > cluster.gpus:
        return Shortfall(
            f"needs {amount(needs.gpus, 'GPU')}", amount(cluster.gpus, "GPU"), per_node=False
        )
    if needs.cpus > cluster.cpus:
        return Shortfall(
            f"needs {amount(needs.cpus, 'CPU')}", amount(cluster.cpus, "CPU"), per_node=False
        )
    return None


def _beyond_largest_node(scaling: dict[str, Any], cluster: ClusterResources) -> Shortfall | None:
    per_worker_cpus = float(scaling.get("cpus_per_worker", 1.0))
    if per_worker_cpus > cluster.largest_node_cpus:
        return Shortfall(
            f"needs {amount(per_worker_cpus, 'CPU')} per worker",
            amount(cluster.largest_node_cpus, "CPU"),
            per_node=True,
        )
    if scaling.get("use_gpu"):
        per_worker_gpus = float(scaling.get("gpus_per_worker", 1.0))
        if per_worker_gpus > cluster.largest_node_gpus:
            return Shortfall(
                f"needs {amount(per_worker_gpus, 'GPU')} per worker",
                amount(cluster.largest_node_gpus, "GPU"),
                per_node=True,
            )
    return None


def _one_run(scaling: dict[str, Any]) -> Resources:
    run = ScalingSpec.model_validate(scaling)  # stored from a validated spec
    return Resources(cpus=run.cpus, gpus=run.gpus)


def _concurrency_that_fits(scaling: dict[str, Any], cluster: ClusterResources) -> str:
    """A sweep too wide for the cluster whose single trial fits: how many trials at once do."""
    run = _one_run(scaling)
    # A bounded resource made the sweep too wide, so the smaller is finite (inf // x is NaN).
    fits = min(cluster.cpus / run.cpus, cluster.gpus / run.gpus if run.gpus else math.inf)
    trial = amount(run.cpus, "CPU") + (f" and {amount(run.gpus, 'GPU')}" if run.gpus else "")
    return f"a trial needs {trial}: set sweep.max_concurrent to {int(fits)} or less"


def pending_reason(needs: Resources, free: Resources, jobs_ahead: int) -> str:
    """'needs 4 GPUs, 2 free, 3 jobs ahead' — what a job that fits the cluster waits for."""
    if needs.gpus > free.gpus:
        short = f"needs {amount(needs.gpus, 'GPU')}, {free.gpus:g} free"
    elif needs.cpus > free.cpus:
        short = f"needs {amount(needs.cpus, 'CPU')}, {free.cpus:g} free"
    else:
        short = "fits; waiting for a dispatcher to claim it"
    if jobs_ahead:
        short += f", {jobs_ahead} job{'s' if jobs_ahead != 1 else ''} ahead"
    return short
