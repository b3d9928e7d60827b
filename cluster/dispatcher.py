"""The dispatcher (`genfleet worker`): drains the Redis queue onto a Ray cluster.

One loop, a tick every `poll_seconds`:
1. reap expired leases (unless the job's runner actor is still alive on Ray),
2. fail jobs that can never fit the cluster, explain why the others wait,
3. claim jobs that fit the free resources and start a runner actor for each,
4. for every job it runs: renew the lease, relay progress into the store, act on cancel,
   record success or failure.
A run it stops or finds dead never closed its trackers: for each one, the dispatcher ends the
job's MLflow runs still RUNNING (KILLED or FAILED), in a thread that does not hold up the tick.
Several dispatchers may share one Redis and one Ray cluster: claims are atomic in Redis and
free resources are counted from every running job in the store, whoever started it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import ray

from cluster import ray_runtime
from cluster.job_runner import is_running_on_ray, start_runner
from cluster.placement import Resources, never_fits_reason, pending_reason
from cluster.relay import Message, Relay
from cluster.relay_sink import write_messages
from jobs.keys import DISPATCHER_STATUS_TTL_SECONDS
from jobs.queue import JobQueue
from jobs.records import JobStatus, LeaseLost
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.store import JobStore
from trainers.trackers import RunOutcome, end_open_runs

log = logging.getLogger("genfleet.dispatcher")

NOT_RETRYABLE = ("NonFiniteLossError", "SpecError", "DatasetError", "CheckpointError")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STOP_SECONDS = 5.0  # the most a stop waits for runners and controllers to be gone
# How the reaper leaves a job whose dispatcher died, and so how that attempt's runs end.
REAPED_OUTCOMES = {JobStatus.QUEUED: RunOutcome.KILLED, JobStatus.DEAD: RunOutcome.FAILED}


@dataclass
class ActiveJob:
    job_id: str
    runner: Any
    result: ray.ObjectRef
    relay: Any
    needs: Resources
    spec: JobSpec
    attempt: int  # the queue's count of claims, which tags the run's MLflow runs
    lease_renewed_at: float = field(default_factory=time.monotonic)
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)  # rank -> pid, node_id
    placement_groups: set[str] = field(default_factory=set)  # every one the run has used
    controllers: dict[str | None, Any] = field(default_factory=dict)  # trial -> Train controller
    undelivered: list[Message] = field(default_factory=list)  # drained, not yet in Redis
    fatal_error: str | None = None  # the run stopped itself (NaN loss): fail, do not retry

    @property
    def node_ids(self) -> list[str]:
        return sorted({worker["node_id"] for worker in self.workers.values()})


class Dispatcher:
    def __init__(
        self,
        queue: JobQueue,
        store: JobStore,
        settings: Settings,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.active: dict[str, ActiveJob] = {}
        self._last_housekeeping = 0.0

    def run(self, stop: threading.Event) -> None:
        log.info("dispatcher %s started", self.worker_id)
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a Redis blip must not kill the dispatcher: log and go on
                log.exception("dispatcher tick failed; retrying")
            stop.wait(self.poll_seconds)
        self.shutdown()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping >= max(2.0, self.poll_seconds):
            self._end_reaped_runs(self.queue.requeue_expired(still_running=is_running_on_ray))
            self._explain_waiting_jobs()
            self._publish_cluster_status()
            self._last_housekeeping = now
        self._claim_fitting_jobs()
        for job in list(self.active.values()):
            self._service(job)

    def shutdown(self) -> None:
        """Stop our runs; their leases lapse and another dispatcher resumes them."""
        self._stop_runs(list(self.active.values()))
        self.active.clear()

    def _stop_runs(self, jobs: list[ActiveJob]) -> None:
        """Stop runs for good and free everything they reserved.

        1. Kill each runner: Tune schedules no further trial, and its trial actors die with it.
        2. Abort each Train controller the run reported, as Ctrl-C on `fit()` would: it frees its
           workers' placement group and exits. Waiting for the aborts is waiting until no
           controller is left that could restart workers whose group vanished.
        3. Remove every placement group the run reported. Ray keeps groups made inside an actor
           while the dispatcher's job lives (see `remove_placement_groups`), so Tune's per-trial
           reservations, and the group of a controller that died before its abort, stay
           otherwise.
        """
        if not jobs:
            return
        for job in jobs:
            ray.kill(job.runner, no_restart=True)
        gone = [job.result for job in jobs]
        gone += [
            controller.abort.remote() for job in jobs for controller in job.controllers.values()
        ]
        ray.wait(gone, num_returns=len(gone), timeout=STOP_SECONDS)
        for job in jobs:
            ray_runtime.remove_placement_groups(job.placement_groups)

    # -- claiming -----------------------------------------------------------------------------

    def _free_resources(self) -> Resources:
        total = ray_runtime.cluster_resources()
        running = self.store.list_jobs(status=JobStatus.RUNNING.value, limit=10_000).records
        used = Resources(
            cpus=sum(record.needs_cpus for record in running),
            gpus=sum(record.needs_gpus for record in running),
        )
        return Resources(
            cpus=max(0.0, total.cpus - used.cpus), gpus=max(0.0, total.gpus - used.gpus)
        )

    def _claim_fitting_jobs(self) -> None:
        while True:
            claimed = self.queue.claim(
                self.worker_id, self.lease_seconds, fits=self._free_resources()
            )
            if claimed is None:
                return
            self._start(claimed.job_id, claimed.spec, claimed.attempt)

    def _start(self, job_id: str, spec: Any, attempt: int) -> None:
        relay = Relay.remote()
        try:
            runner, result = start_runner(
                job_id, attempt, spec, relay, self.settings.storage, str(self.settings.data_dir)
            )
        except ValueError:  # the runner's name is taken: the job still runs under another owner
            self.store.append_event(job_id, "already running on Ray; not started twice")
            return
        needs = Resources(cpus=spec.needs_cpus, gpus=spec.needs_gpus)
        self.active[job_id] = ActiveJob(job_id, runner, result, relay, needs, spec, attempt)
        verb = "resuming from its last checkpoint" if attempt > 1 else "starting"
        self.store.append_log(job_id, f"[dispatcher {self.worker_id}] attempt {attempt}: {verb}")

    def _explain_waiting_jobs(self) -> None:
        """Fail jobs that can never fit; give the rest a plain-words reason to wait."""
        cluster = ray_runtime.cluster_resources()
        free = self._free_resources()
        waiting = self.store.get_many(self.queue.queued(limit=50))
        for ahead, record in enumerate(waiting):
            needs = Resources(cpus=record.needs_cpus, gpus=record.needs_gpus)
            scaling = record.spec.get("scaling", {})
            impossible = never_fits_reason(needs, scaling, cluster, is_sweep=record.kind == "sweep")
            if impossible:
                self.queue.reject(record.id, impossible)
                continue
            reason = pending_reason(needs, free, ahead)
            if reason != record.pending_reason:
                self.queue.set_pending_reason(record.id, reason)

    # -- running ------------------------------------------------------------------------------

    def _relay(self, job: ActiveJob) -> None:
        # A message leaves `undelivered` only once stored, so a Redis outage delays a run's
        # metrics and images instead of losing the ones drained when it began.
        job.undelivered.extend(ray.get(job.relay.drain.remote()))
        for kind, payload in job.undelivered:
            if kind == "fatal" and payload.get("trial") is None:
                job.fatal_error = payload["error"]
            if payload.get("placement_group"):
                job.placement_groups.add(payload["placement_group"])
            if kind == "controller":
                job.controllers[payload.get("trial")] = payload["controller"]
        while job.undelivered:
            for worker in write_messages(self.store, job.job_id, job.undelivered[:1]):
                job.workers[worker["rank"]] = worker
            del job.undelivered[0]

    def _service(self, job: ActiveJob) -> None:
        self._relay(job)
        if self.queue.is_cancel_requested(job.job_id):
            self._stop_runs([job])
            self.queue.mark_cancelled(job.job_id, self.worker_id)
            self._end_tracker_runs(job.job_id, job.spec, job.attempt, RunOutcome.KILLED)
            self._forget(job)
            return
        ready, _ = ray.wait([job.result], timeout=0)
        if ready:
            self._finish(job)
            return
        if time.monotonic() - job.lease_renewed_at >= self.lease_seconds / 3:
            if not self.queue.renew_lease(job.job_id, self.worker_id, self.lease_seconds):
                log.warning("lost the lease on %s; stopping our copy", job.job_id)
                self._stop_runs([job])
                self._end_tracker_runs(job.job_id, job.spec, job.attempt, RunOutcome.KILLED)
                self._forget(job)
                return
            job.lease_renewed_at = time.monotonic()

    def _finish(self, job: ActiveJob) -> None:
        try:
            result = ray.get(job.result)
        except Exception as exc:  # the run failed on Ray: keep the cause for the user
            self._relay(job)
            message = _root_cause(exc)
            retryable = not any(name in message for name in NOT_RETRYABLE)
            try:
                self.queue.fail(
                    job.job_id,
                    self.worker_id,
                    message,
                    _without_colours(traceback.format_exc()),
                    retryable,
                )
            except LeaseLost:
                log.warning(
                    "job %s failed after we lost its lease; its new owner decides", job.job_id
                )
            # A killed worker (its Ray actor died) closed no tracker.
            self._end_tracker_runs(job.job_id, job.spec, job.attempt, RunOutcome.FAILED)
        else:
            self._relay(job)
            if job.fatal_error is not None:
                self.queue.fail(job.job_id, self.worker_id, job.fatal_error, None, retryable=False)
                self._end_tracker_runs(job.job_id, job.spec, job.attempt, RunOutcome.FAILED)
            else:
                result = {**result, "nodes": job.node_ids, "workers": list(job.workers.values())}
                self.queue.complete(job.job_id, self.worker_id, result)
        self._forget(job)

    def _end_reaped_runs(self, job_ids: list[str]) -> None:
        """The reaped jobs' workers died with their dispatcher, before closing any tracker."""
        if not job_ids:  # the usual housekeeping: no round trip to Redis
            return
        for record in self.store.get_many(job_ids):
            outcome = REAPED_OUTCOMES.get(record.status)  # None: claimed again already
            if outcome is not None:
                self._end_tracker_runs(record.id, record.job_spec(), record.attempts, outcome)

    def _end_tracker_runs(
        self, job_id: str, spec: JobSpec, attempt: int, outcome: RunOutcome
    ) -> None:
        """End the job's MLflow runs up to `attempt` still RUNNING, as `outcome`.

        In a thread of its own: a slow tracking server must not hold up the other jobs' leases.
        A daemon, so a dispatcher that stops does not wait for it.
        """
        if spec.logging.mlflow is None:
            return

        def log_line(line: str) -> None:
            self.store.append_log(job_id, f"[dispatcher {self.worker_id}] {line}")

        threading.Thread(
            target=end_open_runs,
            args=(spec, job_id, attempt, outcome, log_line),
            name=f"end-mlflow-runs-{job_id}",
            daemon=True,
        ).start()

    def _forget(self, job: ActiveJob) -> None:
        self.active.pop(job.job_id, None)
        ray.kill(job.relay, no_restart=True)

    def _publish_cluster_status(self) -> None:
        status = {
            "dispatcher": self.worker_id,
            "updated_at": time.time(),
            "nodes": ray_runtime.node_summaries(),
            "available": ray_runtime.available_resources(),
            "running_jobs": {job.job_id: job.node_ids for job in self.active.values()},
        }
        self.store.put_dispatcher_status(
            self.worker_id, status, ttl_seconds=DISPATCHER_STATUS_TTL_SECONDS
        )


def _root_cause(exc: BaseException) -> str:
    """The innermost error line of a Ray failure, which is the user's problem, not Ray's."""
    text = _without_colours(str(exc)).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:2000]
    return (lines[-1] if lines else repr(exc))[:2000]


def _without_colours(text: str) -> str:
    """Ray colours its task names in errors; the record keeps plain text for every reader."""
    return ANSI_ESCAPE.sub("", text)
