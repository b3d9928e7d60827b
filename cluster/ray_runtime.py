"""Ray's runtime as genfleet uses it: connecting (to an existing cluster when an address is
given, else a local one), what the cluster offers, where runners go, and the handles a stop
frees or aborts (placement groups, a run's Train controller).

Ray's token authentication stays on (Ray >= 2.59 enables it for local clusters; a remote
cluster's token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token). genfleet never starts the Ray
dashboard on anything but loopback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
from ray.util import get_current_placement_group
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NAMESPACE = "genfleet"  # runner actors are named in it, so any dispatcher can find them
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    largest_node_cpus: float
    largest_node_gpus: float


def connect_ray(address: str | None) -> str | None:
    """Join `address` or start a local Ray; return the Ray dashboard URL when there is one."""
    if not ray.is_initialized():
        if address:
            context = ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        else:
            # The dashboard process also serves Ray's State API, which Ray Train's placement
            # group cleaner needs: without it a trial stopped by ASHA leaks its CPUs.
            # "local", not None: None joins whatever cluster Ray's address file names (the last
            # `ray start` or ray.cluster_utils.Cluster here), and hangs when that one is gone.
            context = ray.init(
                address="local",
                namespace=NAMESPACE,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
            )
        return getattr(context, "dashboard_url", None) or None
    return None


def cluster_resources() -> ClusterResources:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    per_node = [node.get("Resources", {}) for node in nodes]
    return ClusterResources(
        cpus=sum(resources.get("CPU", 0.0) for resources in per_node),
        gpus=sum(resources.get("GPU", 0.0) for resources in per_node),
        largest_node_cpus=max((r.get("CPU", 0.0) for r in per_node), default=0.0),
        largest_node_gpus=max((r.get("GPU", 0.0) for r in per_node), default=0.0),
    )


def node_summaries() -> list[dict[str, Any]]:
    """Alive and dead nodes with their resources, for the dashboard's Cluster page."""
    summaries = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        summaries.append(
            {
                "node_id": node["NodeID"],
                "address": node.get("NodeManagerAddress"),
                "alive": bool(node.get("Alive")),
                "cpus": resources.get("CPU", 0.0),
                "gpus": resources.get("GPU", 0.0),
                "memory_gb": round(resources.get("memory", 0.0) / 2**30, 1),
            }
        )
    return summaries


def available_resources() -> dict[str, float]:
    available = ray.available_resources()
    return {"cpus": available.get("CPU", 0.0), "gpus": available.get("GPU", 0.0)}


def placement_groups_waiting() -> bool:
    """Whether a placement group waits for resources: a Train run's workers or a Tune trial,
    of any dispatcher, that an idle warm runner may be keeping out."""
    groups = ray.util.placement_group_table().values()
    return any(group.get("state") in ("PENDING", "RESCHEDULING") for group in groups)


def remove_placement_groups(group_ids: Iterable[str]) -> None:
    """Free what a run we killed had reserved (removing one already gone does nothing).

    Ray keeps a placement group made inside an actor until that actor is dead *and* its
    driver's job has ended, and the dispatcher is that driver: the groups of a killed run (Ray
    Train's worker group, Tune's per-trial reservation) would outlive it. Ray Train's own
    cleaner finds a dead controller through the State API, which took over 20 s under load.
    """
    for group_id in group_ids:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


def on_the_head() -> NodeAffinitySchedulingStrategy | str:
    """Where a run's runner and relay go: the head node, which lives as long as the cluster,
    while worker nodes join, scale down and die; "DEFAULT" when no head is found.

    Not soft: a busy head's raylet spilled soft requests to a worker node, and the relay then
    died with that node (tests/cluster scenario (b)), taking the messages it held.
    """
    for node in ray.nodes():
        if node.get("Alive") and HEAD_NODE_RESOURCE in node.get("Resources", {}):
            return NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    return "DEFAULT"


def train_controller() -> Any | None:
    """This run's Ray Train controller, which the dispatcher aborts to cancel the run.

    Ray Train has no public handle to it; its internal train context (Ray 2.60) holds one.
    None where a Ray release keeps it elsewhere: cancel then relies on the runner's death and
    on the placement groups the workers reported.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        return get_train_context().controller_actor
    except (ImportError, AttributeError):
        return None


def placement_group_id() -> str | None:
    """The placement group this process runs in, which the dispatcher frees on cancel."""
    group = get_current_placement_group()
    return group.id.hex() if group is not None else None
