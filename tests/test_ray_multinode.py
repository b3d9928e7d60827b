"""A queued job's Ray Train workers spread over the nodes of a real two-node Ray cluster.

`ray.cluster_utils.Cluster` starts a head and a second node as separate raylets on this machine,
one CPU each, so a job of two 1-CPU workers can only run with one worker on each node. The
session's local Ray is shut down first; `local_ray` starts it again for the tests that follow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.dispatcher import Dispatcher
from cluster.ray_runtime import on_the_head
from jobs.queue import JobQueue
from jobs.records import JobStatus
from jobs.run_storage import RunStorage
from jobs.spec import validate_spec_dict
from jobs.store import JobStore
from tests.ray_fixtures import Stack, dispatcher_thread, stack_settings

pytestmark = pytest.mark.ray

TWO_WORKER_SPEC = {
    "name": "multinode-test",
    "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
    "data": {"dataset": "digits"},
    "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "num_samples": 4},
    "scaling": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0},
}


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A head and one more node, one CPU each; this process is its driver until teardown."""
    if ray.is_initialized():
        ray.shutdown()
    # Cluster records its address in <Ray temp dir>/ray_current_cluster, where any plain
    # `ray.init()` on this machine would find it and join it instead of starting its own Ray.
    # A private temp dir (short: Ray's socket paths live under it) keeps everyone else off it.
    ray_temp = tempfile.mkdtemp(prefix="gf-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_temp)
    cluster = Cluster()
    try:
        cluster.add_node(
            num_cpus=1,
            # Ray Train's placement group cleaner reads the State API, which the dashboard serves.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            # Free ports, not Ray's fixed defaults: other Ray instances may run on this machine.
            dashboard_port=None,
            dashboard_agent_listen_port=None,
        )
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="genfleet", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.fixture
def cluster_stack(tmp_path: Path, redis_client: Any, redis_server: Any) -> Stack:
    prefix = f"mn{os.getpid()}x{time.monotonic_ns() % 10**9}"
    settings = stack_settings(tmp_path, redis_server.url, prefix)
    store = JobStore(redis_client, prefix, RunStorage(settings.storage))
    return Stack(JobQueue(redis_client, prefix), store, settings)


@pytest.fixture
def cluster_dispatcher(two_node_cluster: Cluster, cluster_stack: Stack) -> Iterator[Dispatcher]:
    """A dispatcher thread in this process, whose Ray is the two-node cluster."""
    with dispatcher_thread(cluster_stack) as running:
        yield running


def test_two_worker_job_runs_one_worker_on_each_node_and_succeeds(
    two_node_cluster: Cluster, cluster_stack: Stack, cluster_dispatcher: Dispatcher
) -> None:
    cluster_node_ids = sorted(node.node_id for node in two_node_cluster.list_all_nodes())
    assert len(set(cluster_node_ids)) == 2

    job_id = cluster_stack.queue.submit(validate_spec_dict(TWO_WORKER_SPEC))
    record = cluster_stack.wait_final(job_id, timeout=80)

    assert record.status == JobStatus.SUCCEEDED, record.last_error
    assert record.result["nodes"] == cluster_node_ids
    node_by_rank = {worker["rank"]: worker["node_id"] for worker in record.result["workers"]}
    assert sorted(node_by_rank) == [0, 1]
    assert node_by_rank[0] != node_by_rank[1]
    metrics = cluster_stack.store.metrics(job_id)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["step"] for m in metrics] == [4, 8]
    assert all(0 < m["val_bits_per_dim"] < 10 for m in metrics)
    assert record.result["metrics"]["epoch"] == 2
    assert record.result["metrics"]["val_bits_per_dim"] == pytest.approx(
        metrics[-1]["val_bits_per_dim"]
    )
    # The runner and the relay were pinned to the head, never spilled to a worker node that
    # may die (soft affinity did under load).
    strategy = on_the_head()
    assert (strategy.node_id, strategy.soft) == (two_node_cluster.head_node.node_id, False)
