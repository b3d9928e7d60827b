"""Ask Ray's autoscaler for what the queue needs, so that the cluster grows, from zero if need be.

`ray.autoscaler.sdk.request_resources(bundles=...)` sets a target, not an increment: the
autoscaler adds nodes until every bundle would fit on the cluster's nodes at once, counting
neither what already runs there nor what was asked before, since each call replaces the last
(Ray's docstring: with 45 one-CPU tasks running, asking for 100 CPUs grows the cluster to 100
CPUs, not 145). So the demand holds one bundle per Train worker of the running jobs as well as
of the jobs waiting at the head of the queue, no more in all than GENFLEET_MAX_CLUSTER allows.
It is withdrawn (`bundles=[]`) once nothing waits; idle nodes then go when the autoscaler's
idle timeout says. Every dispatcher computes it from the same Redis, so dispatchers sharing a
cluster ask for the same thing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import RayError

from cluster.train_run import scaling_config
from jobs.records import JobRecord
from jobs.scheduling import Bundle, Demand
from jobs.settings import MaxCluster

log = logging.getLogger("genfleet.autoscaling")

SEND_TIMEOUT_SECONDS = 10.0  # a request still in flight by then is given up and made again


@ray.remote(num_cpus=0)
def _request_resources(bundles: list[Bundle]) -> None:
    """Runs on a node of the cluster: a Ray Client driver (ray://) has no GCS connection of
    its own, and request_resources needs one to reach the autoscaler."""
    request_resources(bundles=bundles)


def worker_bundles(record: JobRecord) -> list[Bundle]:
    """One bundle per Train worker the job holds at once (in a sweep, per concurrent trial)."""
    try:
        spec = record.job_spec()
    except ValueError:  # beyond this host's GENFLEET_MAX_* limits: the claim will fail it
        return []
    config = scaling_config(spec)
    workers = spec.concurrent_runs * config.num_workers
    return [dict(config.resources_per_worker) for _ in range(workers)]


def demand_for(
    running: list[JobRecord], waiting: list[JobRecord], declared: MaxCluster
) -> tuple[list[Bundle], list[str]]:
    """The bundles to request and the waiting jobs they are for; none while nothing waits.

    Waiting jobs join in queue order, each only if the total stays within `declared`.
    """
    cpus = sum(record.needs_cpus for record in running)
    gpus = sum(record.needs_gpus for record in running)
    chosen: list[JobRecord] = []
    for record in waiting:
        more_cpus, more_gpus = cpus + record.needs_cpus, gpus + record.needs_gpus
        if _within(declared.cpus, more_cpus) and _within(declared.gpus, more_gpus):
            chosen.append(record)
            cpus, gpus = more_cpus, more_gpus
    if not chosen:
        return [], []
    bundles = [bundle for record in running + chosen for bundle in worker_bundles(record)]
    return bundles, [record.id for record in chosen]


def _within(bound: float | None, value: float) -> bool:
    return bound is None or value <= bound


class AutoscalerDemand:
    """Passes the queue's demand to Ray when it changes, and keeps the last one that landed.

    One request is in flight at a time, so they land in the order they were made, and none is
    waited for: the tick that sends it also relays every run's messages.
    """

    def __init__(self, dispatcher_id: str, declared: MaxCluster) -> None:
        self.dispatcher_id = dispatcher_id
        self.declared = declared
        # None until the first request lands, which also clears whatever a stopped dispatcher
        # left: Ray keeps a request until the next one replaces it.
        self.sent: Demand | None = None
        self._in_flight: tuple[ray.ObjectRef, Demand, float] | None = None

    def published(self) -> dict[str, Any] | None:
        """The last demand Ray took, as the dispatcher's status carries it."""
        return None if self.sent is None else self.sent.as_json()

    def update(self, running: list[JobRecord], waiting: list[JobRecord]) -> None:
        if self._in_flight is not None and not self._landed(*self._in_flight):
            return
        bundles, job_ids = demand_for(running, waiting, self.declared)
        demand = Demand.grouped(bundles, job_ids, time.time(), self.dispatcher_id)
        if self.sent is not None and self.sent.bundles == demand.bundles:
            self.sent = replace(self.sent, job_ids=demand.job_ids)  # same request, other jobs
            return
        self._in_flight = (_request_resources.remote(bundles), demand, time.monotonic())

    def _landed(self, request: ray.ObjectRef, demand: Demand, started: float) -> bool:
        """Whether the request in flight is over (taken, failed or given up on)."""
        ready, _ = ray.wait([request], timeout=0)
        if not ready and time.monotonic() - started < SEND_TIMEOUT_SECONDS:
            return False
        self._in_flight = None
        try:
            ray.get(request, timeout=0)
        except RayError as exc:  # the next tick asks again
            log.warning("Ray's autoscaler did not get the demand (%s); asking again", exc)
            ray.cancel(request)
            return True
        self.sent = demand
        log.info("asked Ray's autoscaler for %s", demand.describe())
        return True
