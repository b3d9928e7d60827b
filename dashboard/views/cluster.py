"""Cluster page: the Ray nodes, resources in use, the jobs on each node, the jobs waiting and
why, what was asked of Ray's autoscaler for them, and the live dispatchers.

Every dispatcher (cluster/dispatcher.py, `genfleet dispatcher`) publishes its own status with
`JobStore.put_dispatcher_status` every few seconds with a short TTL: `{"dispatcher",
"updated_at", "nodes": [{"node_id", "address", "alive", "cpus", "gpus", "memory_gb"}],
"available": {"cpus", "gpus"}, "running_jobs": {job id: [node ids]}, "waiting": [WaitingJob],
"demand": Demand or null, "max_cluster": GENFLEET_MAX_CLUSTER's bounds}` (jobs/scheduling.py).
This page shows `JobStore.cluster_status`, which merges them: nodes, resources and waiting jobs
from the newest status, the running jobs of all, the demand sent last. A dispatcher that stops
drops out when its status expires; when none is left, the page says so.

Above them, what Redis holds against its `maxmemory`, and a banner while it refuses writes:
since a dispatcher saw a write refused (`redis_full_since`), or while INFO says it is full.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st
from redis.exceptions import NoPermissionError

from dashboard import connection
from dashboard.job_table import format_age
from dashboard.links import job_url
from dashboard.session import refresh_every
from jobs.scheduling import Demand, WaitingJob, sent_demand
from jobs.store import RedisMemory, redis_full_text


def jobs_by_node(running_jobs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Invert job -> nodes: a job on several nodes (multi-worker Ray Train) is on each."""
    by_node: dict[str, list[str]] = {}
    for job_id, node_ids in running_jobs.items():
        for node_id in node_ids:
            by_node.setdefault(node_id, []).append(job_id)
    return by_node


def node_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    on_node = jobs_by_node(status.get("running_jobs", {}))
    return [
        {
            "node": node["node_id"],
            "address": node.get("address"),
            "alive": bool(node.get("alive")),
            "CPUs": node.get("cpus", 0.0),
            "GPUs": node.get("gpus", 0.0),
            "memory (GB)": node.get("memory_gb"),
            "running jobs": on_node.get(node["node_id"], []),
        }
        for node in status.get("nodes", [])
    ]


def usage_metrics(status: dict[str, Any]) -> None:
    alive = [node for node in status.get("nodes", []) if node.get("alive")]
    available = status.get("available", {})
    count, cpus, gpus, jobs = st.columns(4)
    count.metric("Nodes alive", f"{len(alive)} / {len(status.get('nodes', []))}")
    for column, resource, label in ((cpus, "cpus", "CPUs in use"), (gpus, "gpus", "GPUs in use")):
        total = sum(node.get(resource, 0.0) for node in alive)
        in_use = max(total - available.get(resource, total), 0.0)
        column.metric(label, f"{in_use:g} / {total:g}")
    jobs.metric("Running jobs", len(status.get("running_jobs", {})))


def dispatcher_rows(status: dict[str, Any], now: float) -> list[dict[str, Any]]:
    return [
        {
            "dispatcher": dispatcher["dispatcher"],
            "last report": _age(dispatcher.get("updated_at"), now),
            "running jobs": dispatcher["running_job_count"],
        }
        for dispatcher in status.get("dispatchers", [])
    ]


def waiting_rows(status: dict[str, Any]) -> list[dict[str, str]]:
    waiting = (WaitingJob.from_json(job) for job in status.get("waiting", []))
    return [{"job": job_url(job.job_id), "why waiting": job.reason} for job in waiting]


def bundle_rows(demand: Demand) -> list[dict[str, Any]]:
    return [
        {
            "CPUs": entry.bundle.get("CPU", 0.0),
            "GPUs": entry.bundle.get("GPU", 0.0),
            "bundles": entry.count,
        }
        for entry in demand.bundles
    ]


def waiting_and_demand(status: dict[str, Any], now: float) -> None:
    """The jobs the cluster cannot take yet, and the nodes asked of Ray's autoscaler for them."""
    st.subheader("Waiting jobs")
    rows = waiting_rows(status)
    if rows:
        link = st.column_config.LinkColumn("job", display_text=r"job\?job=(\w+)")
        st.dataframe(rows, hide_index=True, width="stretch", column_config={"job": link})
    else:
        st.caption("No job waits.")
    st.subheader("Asked of Ray's autoscaler")
    bound = status.get("max_cluster") or "unbounded"
    st.caption(f"Largest cluster (GENFLEET_MAX_CLUSTER): {bound}")
    demand = sent_demand(status)
    if demand is None:
        st.caption("Nothing sent yet.")
        return
    sent = f"sent {_age(demand.sent_at, now)} by {demand.dispatcher}"
    st.caption(f"Requested: {demand.describe()}; {sent}.")
    if demand.bundles:
        st.dataframe(bundle_rows(demand), hide_index=True, width="stretch")


def redis_memory() -> RedisMemory | None:
    """None where an ACL refuses INFO: the page then shows no memory, not a traceback."""
    try:
        return connection.store().memory()
    except NoPermissionError:
        return None


def memory_and_fullness(status: dict[str, Any] | None) -> None:
    memory = redis_memory()
    full_since = status.get("redis_full_since") if status else None
    if full_since is not None or (memory is not None and memory.full):
        st.error(redis_full_text(full_since))
    if memory is None:
        return
    if memory.maxmemory:
        fraction = min(memory.used / memory.maxmemory, 1.0)
        st.progress(fraction, text=f"Redis memory: {memory.describe()}")
    else:
        st.caption(f"Redis memory: {memory.describe()}")


def _age(updated_at: Any, now: float) -> str:
    return f"{format_age(now - updated_at)} ago" if isinstance(updated_at, int | float) else "?"


@st.fragment(run_every=refresh_every())
def cluster_view() -> None:
    status = connection.store().cluster_status()
    memory_and_fullness(status)
    if status is None:
        st.warning(
            "No dispatcher has reported. Start one with `genfleet dispatcher`; until one runs, "
            "queued jobs stay queued."
        )
        return
    usage_metrics(status)
    st.dataframe(
        node_rows(status),
        hide_index=True,
        width="stretch",
        column_config={
            "running jobs": st.column_config.ListColumn("running jobs"),
        },
    )
    now = time.time()
    waiting_and_demand(status, now)
    st.subheader("Dispatchers")
    st.dataframe(dispatcher_rows(status, now), hide_index=True, width="stretch")


st.title("Cluster")
cluster_view()
