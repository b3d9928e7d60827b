"""What a dispatcher reports about the jobs it cannot start yet: why each one waits, and the
resources it asked Ray's autoscaler for on their behalf (cluster/autoscaling.py).

Both travel in the dispatcher's status (`JobStore.put_dispatcher_status`) as JSON, and
`genfleet status`, the Jobs page and the Cluster page read them back with `from_json`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

Bundle = dict[str, float]  # one Ray Train worker's resources, as Ray names them: {"CPU": 1.0}


@dataclass(frozen=True)
class WaitingJob:
    job_id: str
    reason: str  # "waiting for nodes: needs 1 GPU; the cluster has 0 GPUs"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WaitingJob:
        return cls(job_id=data["job_id"], reason=data["reason"])


@dataclass(frozen=True)
class BundleCount:
    """`count` bundles of one shape, as Ray's autoscaler groups a request."""

    bundle: Bundle
    count: int


@dataclass(frozen=True)
class Demand:
    """The bundles last passed to `ray.autoscaler.sdk.request_resources`; none: withdrawn.

    A request is the whole cluster the autoscaler should make room for, so it holds the
    workers of the running jobs as well as those of `job_ids`, the waiting jobs it is for.
    """

    bundles: tuple[BundleCount, ...]
    job_ids: tuple[str, ...]
    sent_at: float  # Unix seconds on the dispatcher's clock
    dispatcher: str

    @classmethod
    def grouped(
        cls, bundles: list[Bundle], job_ids: list[str], sent_at: float, dispatcher: str
    ) -> Demand:
        shapes = Counter(tuple(sorted(bundle.items())) for bundle in bundles)
        counted = tuple(BundleCount(dict(shape), count) for shape, count in sorted(shapes.items()))
        return cls(counted, tuple(job_ids), sent_at, dispatcher)

    def total(self, resource: str) -> float:
        return sum(entry.bundle.get(resource, 0.0) * entry.count for entry in self.bundles)

    def describe(self) -> str:
        """`4 CPUs and 2 GPUs (3 bundles) for 1 waiting job`, or that nothing is asked."""
        if not self.bundles:
            return "nothing: no waiting job to make room for"
        count = sum(entry.count for entry in self.bundles)
        amounts = " and ".join(
            amount(self.total(resource), resource)
            for resource in ("CPU", "GPU")
            if self.total(resource)
        )
        jobs = amount(len(self.job_ids), "waiting job")
        return f"{amounts} ({amount(count, 'bundle')}) for {jobs}"

    def as_json(self) -> dict[str, Any]:
        return {
            "bundles": [{"bundle": entry.bundle, "count": entry.count} for entry in self.bundles],
            "job_ids": list(self.job_ids),
            "sent_at": self.sent_at,
            "dispatcher": self.dispatcher,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Demand:
        bundles = tuple(BundleCount(entry["bundle"], entry["count"]) for entry in data["bundles"])
        return cls(bundles, tuple(data["job_ids"]), data["sent_at"], data["dispatcher"])


def sent_demand(cluster_status: dict[str, Any] | None) -> Demand | None:
    """The demand in `JobStore.cluster_status()`, if a live dispatcher has sent one."""
    demand = (cluster_status or {}).get("demand")
    return None if demand is None else Demand.from_json(demand)


def amount(value: float, unit: str) -> str:
    """`1 GPU`, `4 CPUs`, `0.5 CPUs`."""
    return f"{value:g} {unit}{'' if value == 1 else 's'}"
