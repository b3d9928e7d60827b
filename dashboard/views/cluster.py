"""Cluster page: the Ray nodes, resources in use, the jobs on each node and the live dispatchers.

Every dispatcher (cluster/dispatcher.py, `genfleet worker`) publishes its own status with
`JobStore.put_dispatcher_status` every few seconds with a short TTL: `{"dispatcher",
"updated_at", "nodes": [{"node_id", "address", "alive", "cpus", "gpus", "memory_gb"}],
"available": {"cpus", "gpus"}, "running_jobs": {job id: [node ids]}}`. This page shows
`JobStore.cluster_status`, which merges them: nodes and resources from the newest status, the
running jobs of all. A dispatcher that stops drops out when its status expires; when none is
left, the page says so.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from dashboard import connection
from dashboard.job_table import format_age
from dashboard.session import refresh_every


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


def _age(updated_at: Any, now: float) -> str:
    return f"{format_age(now - updated_at)} ago" if isinstance(updated_at, int | float) else "?"


@st.fragment(run_every=refresh_every())
def cluster_view() -> None:
    status = connection.store().cluster_status()
    if status is None:
        st.warning(
            "No dispatcher has reported. Start one with `genfleet worker`; until one runs, "
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
    st.subheader("Dispatchers")
    st.dataframe(dispatcher_rows(status, time.time()), hide_index=True, width="stretch")


st.title("Cluster")
cluster_view()
