"""Real Ray for the tests: one local cluster per session, a dispatcher thread per test.

The multi-node module shuts this cluster down to start its own `ray.cluster_utils.Cluster`;
`local_ray` starts it again for whichever test needs it next.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray

from jobs.queue import JobQueue
from jobs.records import JobRecord, JobStatus
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.store import JobStore

FINAL_STATUSES = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD}
LOCAL_RAY_CPUS = 4  # logical CPUs: enough for two 2-worker runs on a 2-core CI machine


@pytest.fixture
def local_ray() -> str:
    """The session's local Ray cluster (token auth on); returns its GCS address.

    The dashboard runs (on loopback) because it serves the State API that Ray Train's placement
    group cleaner needs, as in production.
    """
    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a cluster another process left in /tmp/ray
            num_cpus=LOCAL_RAY_CPUS,
            namespace="genfleet",
            include_dashboard=True,
            log_to_driver=False,
        )
    return ray.get_runtime_context().gcs_address


@dataclass
class Stack:
    """A queue, a store and the settings a dispatcher under test uses."""

    queue: JobQueue
    store: JobStore
    settings: Settings

    def wait_for(
        self, job_id: str, predicate: Callable[[JobRecord], bool], timeout: float
    ) -> JobRecord:
        deadline = time.monotonic() + timeout
        while True:
            record = self.store.get(job_id)
            if predicate(record):
                return record
            if time.monotonic() > deadline:
                events = "\n".join(f"  {e.status} {e.message}" for e in self.store.events(job_id))
                logs = "\n".join(self.store.logs(job_id, tail=30))
                raise AssertionError(
                    f"job {job_id} still {record.status} after {timeout} s; error: "
                    f"{record.last_error}\nevents:\n{events}\nlogs:\n{logs}"
                )
            time.sleep(0.25)

    def wait_final(self, job_id: str, timeout: float = 180.0) -> JobRecord:
        return self.wait_for(job_id, lambda record: record.status in FINAL_STATUSES, timeout)

    def wait_status(self, job_id: str, status: JobStatus, timeout: float = 120.0) -> JobRecord:
        return self.wait_for(job_id, lambda record: record.status == status, timeout)


def stack_settings(tmp_path: Path, redis_url: str, prefix: str) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home,
        redis_url=redis_url,
        prefix=prefix,
        ray_address=None,
        storage=str(tmp_path / "storage"),
        data_dir=home / "data",
        dashboard_address="127.0.0.1",
        dashboard_port=0,
        dashboard_password=None,
        direct_runs=True,  # as `genfleet up` runs them; tests/cluster covers the default off
    )


@pytest.fixture
def stack(tmp_path: Path, redis_client: Any, redis_server: Any, local_ray: str) -> Stack:
    prefix = f"t{os.getpid()}x{time.monotonic_ns() % 10**9}"
    settings = stack_settings(tmp_path, redis_server.url, prefix)
    store = JobStore(redis_client, prefix, RunStorage(settings.storage))
    return Stack(JobQueue(redis_client, prefix), store, settings)


@contextmanager
def dispatcher_thread(stack: Stack) -> Iterator[Any]:
    """A dispatcher draining the stack's queue, on whatever Ray this process is connected to."""
    from cluster.dispatcher import Dispatcher

    running = Dispatcher(
        stack.queue, stack.store, stack.settings, lease_seconds=10, poll_seconds=0.2
    )
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield running
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def dispatcher(stack: Stack) -> Iterator[Any]:
    """A dispatcher draining the stack's queue in a background thread of this process."""
    with dispatcher_thread(stack) as running:
        yield running
