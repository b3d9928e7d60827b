"""Jobs the cluster cannot hold yet wait for nodes, on a real local Ray with no GPU: they are
failed only beyond the declared largest cluster (GENFLEET_MAX_CLUSTER) or after their
`scheduling.wait_timeout`, and their workers are asked of Ray's autoscaler until none waits."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get

from jobs.records import JobStatus
from jobs.scheduling import sent_demand
from jobs.settings import MaxCluster
from jobs.spec import validate_spec_dict
from tests.ray_fixtures import LOCAL_RAY_CPUS, Stack, dispatcher_thread

pytestmark = pytest.mark.ray

ONE_GPU = {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1}
WAITING_FOR_A_GPU = "waiting for nodes: needs 1 GPU; the cluster has 0 GPUs"


def submit(stack: Stack, scaling: dict, **sections: object) -> str:
    spec = {
        "name": "waits",
        "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4}},
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
        "scaling": scaling,
        **sections,
    }
    return stack.queue.submit(validate_spec_dict(spec))


def requested_bundles() -> list[dict[str, float]]:
    """The last request_resources, read back where Ray keeps it for its autoscaler: the GCS's
    key-value store (autoscaler v1's channel; no autoscaler runs here, so v2 is off)."""
    assert not is_autoscaler_v2()
    return json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"[]")


def published_job_ids(stack: Stack) -> tuple[str, ...] | None:
    """The waiting jobs of the demand the dispatcher says Ray took; None before the first."""
    demand = sent_demand(stack.store.cluster_status())
    return None if demand is None else demand.job_ids


def eventually(read, expected, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert value == expected
    return value


def test_a_job_beyond_the_cluster_waits_for_nodes_asking_the_autoscaler_until_it_leaves(
    stack: Stack,
) -> None:
    with dispatcher_thread(stack) as dispatcher:
        gpu_job = submit(stack, ONE_GPU)
        wide_job = submit(stack, {"num_workers": LOCAL_RAY_CPUS * 2})
        stack.wait_for(gpu_job, lambda r: r.pending_reason == WAITING_FOR_A_GPU, 30)
        wide = stack.wait_for(wide_job, lambda r: r.pending_reason is not None, 30)
        assert wide.pending_reason == (
            f"waiting for nodes: needs {LOCAL_RAY_CPUS * 2} CPUs; the cluster has "
            f"{LOCAL_RAY_CPUS} CPUs"
        )
        expected = [{"CPU": 1.0}] * LOCAL_RAY_CPUS * 2 + [{"CPU": 1.0, "GPU": 1.0}]
        eventually(lambda: sorted(requested_bundles(), key=len), expected)
        eventually(
            lambda: (stack.store.cluster_status() or {}).get("waiting"),
            [
                {"job_id": gpu_job, "reason": WAITING_FOR_A_GPU},
                {"job_id": wide_job, "reason": wide.pending_reason},
            ],
        )
        # Published once Ray has taken it, a tick after it was sent.
        eventually(lambda: published_job_ids(stack), (gpu_job, wide_job))
        demand = sent_demand(stack.store.cluster_status())
        assert (demand.total("CPU"), demand.total("GPU")) == (LOCAL_RAY_CPUS * 2 + 1, 1)
        sent = dispatcher.autoscaler_demand.sent
        time.sleep(4.5)  # two more housekeeping ticks over the same queue
        assert dispatcher.autoscaler_demand.sent.sent_at == sent.sent_at  # not asked again
        # Ticks later, still queued: waiting, not failing.
        assert [stack.store.get(job_id).status for job_id in (gpu_job, wide_job)] == [
            JobStatus.QUEUED,
            JobStatus.QUEUED,
        ]

        stack.queue.cancel(gpu_job)
        stack.queue.cancel(wide_job)
        eventually(requested_bundles, [])  # withdrawn once the queue holds nothing waiting
        eventually(lambda: published_job_ids(stack), ())
        assert sent_demand(stack.store.cluster_status()).bundles == ()


def test_a_job_beyond_the_declared_largest_cluster_fails_at_once_with_the_reason(
    stack: Stack,
) -> None:
    stack.settings = replace(stack.settings, max_cluster=MaxCluster(gpus=4, node_gpus=2))
    with dispatcher_thread(stack):
        too_many = submit(stack, {**ONE_GPU, "num_workers": 2, "gpus_per_worker": 4})
        too_large = submit(stack, {**ONE_GPU, "num_workers": 1, "gpus_per_worker": 3})
        fits_later = submit(stack, {**ONE_GPU, "num_workers": 2, "gpus_per_worker": 2})
        rejected = [stack.wait_final(job_id, timeout=30) for job_id in (too_many, too_large)]
        waiting = stack.wait_for(fits_later, lambda r: r.pending_reason is not None, 30)
        stack.queue.cancel(fits_later)
    assert [(record.status, record.last_error) for record in rejected] == [
        (JobStatus.FAILED, "needs 8 GPUs, the cluster has at most 4 GPUs (GENFLEET_MAX_CLUSTER)"),
        (
            JobStatus.FAILED,
            "needs 3 GPUs per worker, a node has at most 2 GPUs (GENFLEET_MAX_CLUSTER)",
        ),
    ]
    assert waiting.pending_reason == "waiting for nodes: needs 4 GPUs; the cluster has 0 GPUs"


def test_a_waiting_job_fails_after_its_wait_timeout_and_its_demand_is_withdrawn(
    stack: Stack,
) -> None:
    with dispatcher_thread(stack):
        job_id = submit(stack, ONE_GPU, scheduling={"wait_timeout": 3})
        eventually(requested_bundles, [{"CPU": 1.0, "GPU": 1.0}])
        record = stack.wait_final(job_id, timeout=30)
        eventually(requested_bundles, [])
    assert record.status == JobStatus.FAILED
    assert record.last_error == "waited 3 s for nodes: needs 1 GPU; the cluster has 0 GPUs"
    assert record.finished_at - record.created_at >= 3
