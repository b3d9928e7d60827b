"""The dispatcher (`genfleet dispatcher`): drains the Redis queue onto a Ray cluster.

One loop, a tick every `poll_seconds`:
1. stop the runs whose lease the lease keeper (cluster/lease_keeper.py, a thread of its own,
   so that nothing slow here delays a renewal) no longer holds;
2. housekeeping every 2 s, each step on its own: reap expired leases, explain why queued jobs
   wait (failing those that can never fit), publish this dispatcher's view of the cluster;
3. claim jobs that fit the free resources and start a runner actor for each;
4. for every job it runs, on its own: relay a bounded batch of the run's messages into the
   store, act on cancel, record the outcome.
A job's trouble stays that job's: a relay that died, a message Redis refuses or a lost lease
ends or hands back that one job, with the reason, and every other job is serviced in the same
tick. A Redis that refuses writes for memory (`maxmemory`, noeviction) is no job's fault: the
dispatcher says "Redis is full" in its status, claims nothing, keeps each run's messages (in
the run's relay, which bounds them), and goes on once writes are taken again; leases, final
states and its status are written even by a full Redis (jobs/lua_scripts.py, ALLOWED_WHEN_FULL).

Everything written for a run carries its lease (jobs/queue.py), so once another dispatcher owns
a job nothing from this one lands, and a refused write stops this copy of the run at once. A
dispatcher that cannot renew a lease for `lease_seconds` (cut off from Redis) stops that run
itself, since by then another dispatcher may own it. Stopped with SIGTERM or Ctrl-C, it hands
its jobs back at once, without using an attempt. A run it stops or finds dead never closed its
trackers: the dispatcher ends the job's MLflow runs still RUNNING (KILLED or FAILED), in a
thread that does not hold up the tick. Several dispatchers may share one Redis and one Ray
cluster: claims are atomic in Redis and free resources are counted from every running job in
the store, whoever started it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, TypeVar

import ray
from ray.exceptions import (
    ActorUnavailableError,
    ActorUnschedulableError,
    RayActorError,
    RayTaskError,
)
from redis.exceptions import NoPermissionError, OutOfMemoryError

from cluster import ray_runtime
from cluster.autoscaling import AutoscalerDemand
from cluster.checkpoint_pruning import Deletions, RecordedCheckpoints
from cluster.job_runner import hold_run_name, is_running_on_ray, start_runner, stop_stale_runner
from cluster.lease_keeper import LeaseKeeper
from cluster.placement import judge_queued_jobs, largest_cluster
from cluster.relay import Relay
from cluster.train_run import (
    direct_run_config,
    newest_whole_checkpoint,
    run_folder,
    run_loop_config,
)
from cluster.warm_runner import WarmPool, runs_directly, start_warm_runner
from jobs.deletion import BATCH as RETENTION_BATCH
from jobs.deletion import apply_retention
from jobs.keys import (
    DISPATCHER_STATUS_TTL_SECONDS,
    RUN_WRITE_BYTES_PER_TICK,
    RUN_WRITES_PER_TICK,
)
from jobs.messages import (
    Checkpoint,
    Controller,
    Fatal,
    Log,
    Message,
    PlacementGroup,
    TrialUpdate,
    Unrecoverable,
    Worker,
    message_bytes,
)
from jobs.queue import ClaimedJob, JobQueue, Resources
from jobs.records import (
    InvalidTransition,
    JobNotFound,
    JobRecord,
    JobStatus,
    Lease,
    LeaseLost,
    TrialStatus,
)
from jobs.scheduling import WaitingJob
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.store import JobStore
from trainers.trackers import RunOutcome, end_open_runs

log = logging.getLogger("genfleet.dispatcher")
T = TypeVar("T")

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STOP_SECONDS = 5.0  # the most a stop waits for runners and controllers to be gone
PRUNE_SECONDS = 15.0  # the most a stopping dispatcher waits for its checkpoint deletions
# The most a stopping dispatcher takes, once its runs are stopped, to store their last messages,
# hand their jobs back and wait for deletions: inside the grace period a supervisor allows
# between SIGTERM and SIGKILL (30 s in Kubernetes; docker/compose.yaml sets the same), so that
# every job is handed back instead of waiting for its lease to expire.
SHUTDOWN_SECONDS = 20.0
RETENTION_SECONDS = 600.0  # how often GENFLEET_RETENTION_DAYS deletes what it no longer keeps
RELAY_TIMEOUT_SECONDS = 60.0  # a relay silent this long is lost (its node, most likely)
FINAL_DRAIN_BATCHES = 1000  # bounds the last drain of a finished run
# How the reaper leaves a job whose dispatcher died, and so how that attempt's runs end.
REAPED_OUTCOMES = {
    JobStatus.QUEUED: RunOutcome.KILLED,
    JobStatus.CANCELLED: RunOutcome.KILLED,
    JobStatus.DEAD: RunOutcome.FAILED,
}


class NameTaken(Exception):
    """The job's runner name is held by a runner from an older lease that does not stop."""


class RelayLost(RuntimeError):
    """The run's relay actor died or cannot be reached: its messages can no longer come home."""


@dataclass
class DirectRun:
    """A run trained directly by a warm runner (cluster/warm_runner.py); `runner` of ActiveJob
    is then the `RunName` that holds the job's runner name."""

    process: Any  # the WarmRunner training it
    config: dict[str, Any]  # what it was started with; a restart changes `resume_from`
    restarts: int = 0


@dataclass
class ActiveJob:
    lease: Lease  # the claim: owner and fencing token of every write made for the run
    runner: Any
    result: ray.ObjectRef
    relay: Any
    needs: Resources
    spec: JobSpec
    attempt: int  # attempts used, this one included, as the record counts them
    serviced_at: float = field(default_factory=time.monotonic)  # last tick that went through
    workers: dict[int, Worker] = field(default_factory=dict)  # rank -> where it runs
    placement_groups: set[str] = field(default_factory=set)  # every one the run has used
    trial_groups: dict[str, set[str]] = field(default_factory=dict)  # trial -> its workers'
    # trial -> the placement group of its newest Train workers, and when they started
    current_groups: dict[str | None, tuple[str, float]] = field(default_factory=dict)
    replaced_groups: dict[str | None, set[str]] = field(default_factory=dict)  # trial -> older
    controllers: dict[str | None, Any] = field(default_factory=dict)  # trial -> Train controller
    checkpoints: RecordedCheckpoints | None = None  # a train job's, pruned as new ones land
    direct: DirectRun | None = None  # a one-worker run in a warm runner, not Ray Train
    undelivered: deque[Message] = field(default_factory=deque)  # drained, not yet in Redis
    drain: ray.ObjectRef | None = None  # the relay's answer to come, collected when ready
    drain_sent_at: float = 0.0
    # When the last drain answered had been sent, if its answer held less than it asked (the
    # relay had nothing more then); None after an answer that filled its limit.
    emptied_at: float | None = None
    drain_limit: int = 0  # messages the drain in flight asks for
    fatal_error: str | None = None  # the run stopped itself (NaN loss): fail, do not retry
    trials_seen: set[str] = field(default_factory=set)  # every trial the sweep reported on
    # Each `Unrecoverable` by trial (None: the job's): a failure a retry would raise again.
    unrecoverable: dict[str | None, set[str]] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.lease.job_id

    @property
    def fails_for_good(self) -> bool:
        """Whether a retry of the failed run would fail the same way: the run met an error of
        jobs/failures.py, or every trial of the sweep did (one trial's is that trial's own)."""
        if None in self.unrecoverable:
            return True
        return bool(self.trials_seen) and self.trials_seen <= set(self.unrecoverable)

    def is_news(self, message: Message) -> bool:
        """Note what decides whether a failure of the run is retried (`fails_for_good`); False
        for an `Unrecoverable` already noted: every rank and each of Ray Train's restarts of
        the run send the same one, and the job's log says it once."""
        if isinstance(message, TrialUpdate):
            self.trials_seen.add(message.trial)
        if not isinstance(message, Unrecoverable):
            return True
        seen = self.unrecoverable.setdefault(message.trial, set())
        if message.error in seen:
            return False
        seen.add(message.error)
        return True

    @property
    def node_ids(self) -> list[str]:
        return sorted({worker.node_id for worker in self.workers.values()})

    def from_current_workers(self, message: Message) -> bool:
        """Whether the message comes from the newest Train workers of its trial (None: the job).

        A worker whose node was cut off keeps what it had not sent, and Ray delivers it once
        the network heals, after Ray Train restarted the run on other workers from a
        checkpoint: an old epoch's row arriving then would rewind the curve the new workers
        wrote past it. Each group announces itself (`Worker`, stamped with when it started)
        before it sends anything else; the group started last is the current one, and one
        replaced never counts again, even when its own `Worker` arrives late.
        """
        trial = getattr(message, "trial", None)
        replaced = self.replaced_groups.setdefault(trial, set())
        current = self.current_groups.get(trial)
        if isinstance(message, Worker):
            group = message.group
            if group is None or (current is not None and group == current[0]):
                return True
            if group not in replaced and (current is None or message.started_at >= current[1]):
                if current is not None:
                    replaced.add(current[0])
                self.current_groups[trial] = (group, message.started_at)
                return True
            replaced.add(group)
        else:
            group = getattr(message, "group", None)
            if group is None or current is None or group == current[0]:
                return True
        log.warning(
            "job %s: dropped a %s from replaced workers", self.job_id, type(message).__name__
        )
        return False


class Dispatcher:
    def __init__(
        self,
        queue: JobQueue,
        store: JobStore,
        settings: Settings,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        dispatcher_id: str | None = None,
        shutdown_seconds: float = SHUTDOWN_SECONDS,
    ) -> None:
        self.queue = queue
        self.store = store
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.shutdown_seconds = shutdown_seconds
        self.dispatcher_id = dispatcher_id or f"{socket.gethostname()}-{os.getpid()}"
        self.active: dict[str, ActiveJob] = {}
        self._last_housekeeping = 0.0
        self._last_retention = -math.inf
        self.redis_full_since: float | None = None  # wall clock; a write refused for memory
        self.leases = LeaseKeeper(queue, lease_seconds, on_lost=self._halt)
        self._expired_since: dict[str, float] = {}  # other dispatchers' expired, live runs
        self.autoscaler_demand = AutoscalerDemand(self.dispatcher_id, settings.max_cluster)
        self.waiting: list[WaitingJob] = []  # as last explained, for the published status
        self.deletions = Deletions()  # of the recorded checkpoints its jobs no longer keep
        self.pool = WarmPool(settings.warm_runners if settings.direct_runs else 0)

    def run(self, stop: threading.Event) -> None:
        log.info("dispatcher %s started", self.dispatcher_id)
        self.leases.start()
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a Redis blip must not kill the dispatcher: log and go on
                log.exception("dispatcher tick failed; retrying")
            stop.wait(self.poll_seconds)
        self.shutdown()

    def tick(self) -> None:
        for job in list(self.active.values()):
            reason = self.leases.lost(job.job_id)
            if reason is not None:
                self._drop(job, reason)
        now = time.monotonic()
        if now - self._last_housekeeping >= max(2.0, self.poll_seconds):
            self._last_housekeeping = now
            housekeeping = (
                self._reap,
                self._explain_waiting_jobs,
                self._watch_redis_memory,
                self._publish_cluster_status,
                self.deletions.forget_done,
                self._apply_retention,
            )
            for step in housekeeping:
                try:  # each on its own: one bad queued record must not stop the others
                    step()
                except OutOfMemoryError:
                    self._redis_refused(f"housekeeping ({step.__name__})")
                except Exception:
                    log.exception("housekeeping step %s failed; the tick goes on", step.__name__)
        if self.redis_full_since is None:  # a new run would only add to what waits
            self._claim_fitting_jobs()
        self._keep_warm_runners()
        for job in list(self.active.values()):
            self._service_alone(job)

    def _keep_warm_runners(self) -> None:
        """Idle warm runners while no job waits for resources; none while one does, queued or
        claimed (its workers' placement group pending), so that their CPUs go to it."""
        if not self.pool.size:
            return
        try:
            if self.waiting or ray_runtime.placement_groups_waiting():
                self.pool.retire()
            else:
                self.pool.drop_failed()
                if self.pool.wants_runners:  # else what is free need not be read every tick
                    ours = self._free_resources().cpus - self.pool.idle_cpus
                    cpus = min(ray_runtime.available_resources()["cpus"], ours)
                    self.pool.refill(cpus, ray_runtime.on_the_head())
        except Exception:  # a warm runner only saves start-up time; the tick goes on
            log.exception("could not keep the warm runners")

    def _redis_refused(self, what: str) -> None:
        if self.redis_full_since is None:
            log.warning("Redis is full: it refused %s; claims stop until it takes writes", what)
            self.redis_full_since = time.time()

    def _watch_redis_memory(self) -> None:
        """Claim again once Redis has room, even with no run whose write would show it."""
        if self.redis_full_since is None:
            return
        try:
            full = self.store.memory().full
        except NoPermissionError:  # an ACL without INFO: try a claim, which says it again
            full = False
        if not full:
            log.info("Redis takes writes again")
            self.redis_full_since = None

    def _apply_retention(self) -> None:
        days = self.settings.retention_days
        if days is None or time.monotonic() - self._last_retention < RETENTION_SECONDS:
            return
        deleted = apply_retention(self.store, days)
        # A pass that reached its bound goes on at the next housekeeping, not in 10 minutes.
        self._last_retention = -math.inf if len(deleted) >= RETENTION_BATCH else time.monotonic()
        if deleted:
            log.info("retention: deleted %d jobs finished over %g days ago", len(deleted), days)

    def _reap(self) -> None:
        asked: set[str] = set()  # the expired leases of this round

        def keeps(job_id: str) -> bool:
            asked.add(job_id)
            return self._keeps_expired(job_id)

        self._end_reaped_runs(self.queue.requeue_expired(still_running=keeps))
        # Forget expiries that are gone (renewed, or reaped by another dispatcher), so that
        # a later expiry of the job starts its grace period afresh.
        for job_id in set(self._expired_since) - asked:
            del self._expired_since[job_id]

    def shutdown(self) -> None:
        """Stop our runs and hand their jobs back at once, without using an attempt; the next
        dispatcher to claim one resumes it from its last checkpoint.

        Bounded by `shutdown_seconds` after the runs stopped: a relay that does not answer
        costs its job its last messages (the next claim redoes those epochs), never another
        job its hand-back.
        """
        jobs = list(self.active.values())
        self._stop_runs(jobs)
        with suppress(Exception):  # Ray is gone: so are they
            self.pool.retire()
        until = time.monotonic() + self.shutdown_seconds
        lost = self._store_what_is_left(jobs, until)
        reason = f"handed back: dispatcher {self.dispatcher_id} stopped"
        for job in jobs:
            try:
                if job.job_id in lost:
                    continue  # another dispatcher holds it already
                self.queue.release(job.lease, reason)
                self._end_tracker_runs(job.job_id, job.spec, job.lease.claim, RunOutcome.KILLED)
            except Exception as exc:  # Redis is gone, or the lease: its expiry hands it back
                log.warning("could not hand back %s (%s); its lease will expire", job.job_id, exc)
            finally:
                self._forget(job)
        try:
            self.deletions.settle(min(PRUNE_SECONDS, max(0.0, until - time.monotonic())))
        except Exception as exc:  # Ray is gone: so are its tasks, nothing left to wait for
            log.warning("could not wait for the checkpoint deletions (%s)", exc)
        self.leases.stop()

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
        try:
            for job in jobs:
                ray.kill(job.runner, no_restart=True)
                if job.direct is not None:
                    ray.kill(job.direct.process, no_restart=True)
            gone = [job.result for job in jobs]
            gone += [
                controller.abort.remote() for job in jobs for controller in job.controllers.values()
            ]
            ray.wait(gone, num_returns=len(gone), timeout=STOP_SECONDS)
            for job in jobs:
                ray_runtime.remove_placement_groups(job.placement_groups)
        except Exception:  # Ray unreachable: its runners die with this driver's connection
            log.exception("could not stop every run of %s", [job.job_id for job in jobs])

    def _store_what_is_left(self, jobs: list[ActiveJob], until: float) -> set[str]:
        """Store what stopped runs sent before they stopped, until `until` (monotonic), so
        that each job's next claim resumes from its newest checkpoint; best effort, as without
        it that claim redoes a few epochs. Every relay is drained at once, so one that does not
        answer holds up no other job. Returns the jobs whose lease was lost meanwhile.
        """
        left = {job.job_id: job for job in jobs}
        lost: set[str] = set()
        stopped = time.monotonic()
        for _ in range(FINAL_DRAIN_BATCHES):
            for job in list(left.values()):
                try:
                    if self._relay(job, since=stopped):
                        del left[job.job_id]
                except LeaseLost:
                    lost.add(job.job_id)
                    del left[job.job_id]
                except Exception as exc:
                    log.warning("job %s: could not store its last messages (%s)", job.job_id, exc)
                    del left[job.job_id]
            remaining = until - time.monotonic()
            if not left or remaining <= 0:
                break
            drains = [job.drain for job in left.values() if job.drain is not None]
            if drains and not any(job.undelivered for job in left.values()):
                try:
                    ray.wait(drains, num_returns=1, timeout=remaining)  # the first answer to come
                except Exception as exc:  # Ray is gone: no relay will answer any more
                    log.warning("could not wait for the relays (%s)", exc)
                    break
        for job_id in left:
            log.warning("job %s: out of time to store its last messages", job_id)
        return lost

    def _keeps_expired(self, job_id: str) -> bool:
        """Whether the reaper leaves an expired lease alone for now.

        Our own jobs: we renew them or stop them ourselves. Another dispatcher's job whose
        runner still lives on Ray: that dispatcher may be back from a Redis outage, or about to
        stop the run itself; after one more lease period it is hung, and its runner is stopped
        here, so that the job can run elsewhere and never has two live runners.
        """
        if job_id in self.active:
            return True
        if not is_running_on_ray(job_id):
            self._expired_since.pop(job_id, None)
            return False
        first_seen = self._expired_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - first_seen < self.lease_seconds:
            return True
        del self._expired_since[job_id]
        stopped = stop_stale_runner(job_id, STOP_SECONDS)
        log.warning(
            "job %s: lease expired, its runner still alive after %g s: %s",
            job_id,
            self.lease_seconds,
            "stopped it; requeueing" if stopped else "could not stop it yet",
        )
        return not stopped

    # -- claiming -----------------------------------------------------------------------------

    def _running_records(self) -> list[JobRecord]:
        """Every running job in the store, whichever dispatcher runs it."""
        return self.store.list_jobs(status=JobStatus.RUNNING.value, limit=10_000).records

    def _free_resources(self, running: list[JobRecord] | None = None) -> Resources:
        total = ray_runtime.cluster_resources()
        running = self._running_records() if running is None else running
        # Other dispatchers' idle warm runners hold CPUs; ours are ours to give up (`_start`).
        warm = sum(
            status.get("warm_cpus", 0.0)
            for status in self.store.dispatcher_statuses()
            if status["dispatcher"] != self.dispatcher_id
        )
        used = Resources(
            cpus=sum(record.needs_cpus for record in running) + warm,
            gpus=sum(record.needs_gpus for record in running),
        )
        return Resources(
            cpus=max(0.0, total.cpus - used.cpus), gpus=max(0.0, total.gpus - used.gpus)
        )

    def _claim_fitting_jobs(self) -> None:
        while True:
            claimed_at = time.monotonic()  # no later than Redis starts the lease
            try:
                claimed = self.queue.claim(
                    self.dispatcher_id, self.lease_seconds, fits=self._free_resources()
                )
            except OutOfMemoryError:
                self._redis_refused("a claim")
                return
            if claimed is None:
                return
            self.leases.hold(claimed.lease, claimed_at)
            try:
                self._start(claimed)
            except Exception as exc:  # Ray refused the runner: the job goes back, untouched
                log.exception("job %s: could not start its run", claimed.job_id)
                self.leases.let_go(claimed.job_id)
                with suppress(Exception):
                    self.queue.release(claimed.lease, f"could not start its run: {exc}")

    def _start(self, claimed: ClaimedJob) -> None:
        job_id, spec, lease = claimed.job_id, claimed.spec, claimed.lease
        if job_id in self.active:  # claimed again (a Redis restart lost our claim's renewal)
            self._drop(self.active[job_id], "claimed again; the older copy stops")
            self.leases.hold(lease, time.monotonic())
        # Before the relay starts, so that Redis failing here leaves no actor behind.
        recorded: dict[str | None, list[str]] = {}  # trial (None: the job's) -> newest first
        for checkpoint in reversed(self.store.checkpoints(job_id)):
            recorded.setdefault(checkpoint.trial, []).append(checkpoint.uri)
        head = ray_runtime.on_the_head()
        direct = self.settings.direct_runs and runs_directly(spec)
        direct_run = direct and spec.kind == "train"
        warm = self.pool.take(spec) if direct_run else None
        if warm is None:
            self.pool.retire()  # the run may need the CPUs the idle ones hold
        relay = warm.relay if warm else Relay.options(scheduling_strategy=head).remote()
        direct: DirectRun | None = None
        try:
            if direct_run:
                config = self._direct_config(claimed, relay, recorded)
                process = warm.runner if warm else start_warm_runner(spec.scaling.cpus_per_worker)
                direct = DirectRun(process, config)
                runner = self._named(job_id, partial(hold_run_name, job_id))
                result = process.run.remote(direct.config, runner)
            else:
                runner, result = self._named(
                    job_id, partial(self._start_runner, claimed, relay, recorded, direct)
                )
        except BaseException as exc:
            for actor in (relay, direct.process if direct else None):
                with suppress(Exception):
                    ray.kill(actor, no_restart=True)
            if not isinstance(exc, NameTaken):
                raise
            # Its name is still taken: a copy from an older lease lives on.
            self.leases.let_go(job_id)
            # Not an interruption: no run of ours was lost, and counting it would burn the cap
            # in a minute while a partitioned node keeps the old runner's name.
            self.queue.release(lease, "an earlier run of this job is still stopping on Ray")
            return
        needs = Resources(cpus=spec.needs_cpus, gpus=spec.needs_gpus)
        job = ActiveJob(lease, runner, result, relay, needs, spec, claimed.attempt, direct=direct)
        if spec.kind == "train":
            run_dir = run_folder(self.settings.storage, job_id)
            uris = recorded.get(None, [])[::-1]
            job.checkpoints = RecordedCheckpoints(run_dir, lease.claim, uris, head, self.deletions)
        self.active[job_id] = job
        verb = "resuming from its last checkpoint" if lease.claim > 1 else "starting"
        job.undelivered.append(
            Log(f"[dispatcher {self.dispatcher_id}] attempt {claimed.attempt}: {verb}")
        )

    def _start_runner(
        self,
        claimed: ClaimedJob,
        relay: Any,
        recorded: dict[str | None, list[str]],
        direct_trials: bool,
    ) -> tuple[Any, ray.ObjectRef]:
        """Start the job's runner (`recorded`: its checkpoints by trial, newest first)."""
        return start_runner(
            claimed.job_id,
            claimed.lease.claim,
            claimed.spec,
            relay,
            self.settings.storage,
            str(self.settings.data_dir),
            recorded,
            direct_trials,
        )

    def _direct_config(
        self, claimed: ClaimedJob, relay: Any, recorded: dict[str | None, list[str]]
    ) -> dict[str, Any]:
        data_dir = str(self.settings.data_dir)
        loop_config = run_loop_config(claimed.job_id, claimed.lease.claim, relay, data_dir)
        run_dir = run_folder(self.settings.storage, claimed.job_id)
        return direct_run_config(claimed.spec, loop_config, run_dir, recorded.get(None, []))

    @staticmethod
    def _named(job_id: str, start: Callable[[], T]) -> T:
        """`start()` the actor that holds the job's runner name; a runner left from an older
        lease is stopped first if it holds it still, as the claim makes us the job's only
        owner. NameTaken while it does not stop."""
        try:
            return start()
        except ValueError:  # Ray's word for a name in use
            stop_stale_runner(job_id, STOP_SECONDS)
        try:
            return start()
        except ValueError as exc:
            raise NameTaken(job_id) from exc

    def _explain_waiting_jobs(self) -> None:
        """Fail jobs that can never fit or waited too long; give the rest a plain-words reason
        to wait, and ask Ray's autoscaler for the nodes they wait for."""
        queued = self.store.get_many(self.queue.queued(limit=50))
        largest = largest_cluster(self.settings.max_cluster)
        running = self._running_records()
        cluster, free = ray_runtime.cluster_resources(), self._free_resources(running)
        verdicts = judge_queued_jobs(queued, cluster, free, largest, time.time())
        for verdict in verdicts:
            if verdict.rejected:
                with suppress(InvalidTransition):  # claimed or cancelled since it was read
                    self.queue.reject(verdict.record.id, verdict.reason)
            elif verdict.reason != verdict.record.pending_reason:
                self.queue.set_pending_reason(verdict.record.id, verdict.reason)
        waiting = [verdict for verdict in verdicts if not verdict.rejected]
        self.waiting = [WaitingJob(verdict.record.id, verdict.reason) for verdict in waiting]
        self.autoscaler_demand.update(running, [verdict.record for verdict in waiting])

    # -- running ------------------------------------------------------------------------------

    def _service_alone(self, job: ActiveJob) -> None:
        """Service one job; whatever goes wrong with it leaves the other jobs untouched."""
        if job.job_id not in self.active:  # dropped earlier in this tick
            return
        try:
            self._service(job)
        except LeaseLost:
            self._drop(job, "a write for the run was refused: another dispatcher owns the job")
        except JobNotFound:  # ended elsewhere, then deleted: nothing of the run may land
            self._drop(job, "the job was deleted")
        except OutOfMemoryError:  # nothing is lost: the messages wait, in order, for space
            self._redis_refused(f"a write for job {job.job_id}")
            job.serviced_at = time.monotonic()
        except RelayLost as exc:
            reason = f"its relay actor was lost ({exc}); resumes from its checkpoint"
            self._interrupt(job, reason, relay_alive=False)
        except Exception:
            log.exception("job %s: servicing failed; the other jobs go on", job.job_id)
            if time.monotonic() - job.serviced_at >= self.lease_seconds:
                self._interrupt(job, f"could not be serviced for {self.lease_seconds:g} s")
        else:
            job.serviced_at = time.monotonic()

    def _service(self, job: ActiveJob) -> None:
        try:
            self._relay(job)
        except OutOfMemoryError:
            if not self.queue.is_cancel_requested(job.job_id):
                raise
        ready, _ = ray.wait([job.result], timeout=0)
        if ready:  # also with a cancel pending: the queue ends it cancelled, result kept
            self._finish(job)
        elif self.queue.is_cancel_requested(job.job_id):
            self._stop_runs([job])
            # A full Redis must not keep a run the user cancelled: its last messages go.
            with suppress(OutOfMemoryError):
                self._relay_everything(job)
            self.queue.mark_cancelled(job.lease)
            self._end_tracker_runs(job.job_id, job.spec, job.lease.claim, RunOutcome.KILLED)
            self._forget(job)

    def _relay(self, job: ActiveJob, wait_seconds: float = 0.0, since: float = -math.inf) -> bool:
        """Store one bounded batch of the run's messages, waiting up to `wait_seconds` for the
        relay's answer; True when nothing was left to store, as a drain sent at `since` or
        later (monotonic) says: one sent earlier may have left what came in after it.

        A message leaves `undelivered` only once stored, so a Redis outage delays a run's
        metrics and images instead of losing the ones drained when it began.
        """
        drained = [
            m
            for m in self._collect_drain(job, wait_seconds)
            if job.from_current_workers(m) and job.is_news(m)
        ]
        job.undelivered.extend(drained)
        for message in drained:
            try:
                self._note(job, message)
            except Exception:  # what the dispatcher keeps is best effort; the message is not
                log.exception("job %s: could not note %r", job.job_id, type(message).__name__)
        if not job.undelivered:
            emptied = job.emptied_at is not None and job.emptied_at >= since
            return job.drain is None and emptied
        batch = _batch(job.undelivered)
        if self.store.write_for_run(job.lease, batch):
            self.redis_full_since = None  # Redis took a write
        for message in batch:
            job.undelivered.popleft()
            of_the_job = isinstance(message, Checkpoint) and message.trial is None
            if of_the_job and job.checkpoints is not None:
                job.checkpoints.add(message.path)
        return False

    def _collect_drain(self, job: ActiveJob, wait_seconds: float) -> list[Message]:
        """The relay's messages once its answer is in; a tick never waits for it unless asked
        (`wait_seconds`), so a relay that is slow to answer holds up no other job."""
        room = RUN_WRITES_PER_TICK - len(job.undelivered)
        if job.drain is None and room > 0:
            job.drain = job.relay.drain.remote(room)
            job.drain_sent_at = time.monotonic()
            job.drain_limit = room
        if job.drain is None:
            return []
        ready, _ = ray.wait([job.drain], timeout=wait_seconds)
        if not ready:
            silent = time.monotonic() - job.drain_sent_at
            if silent >= RELAY_TIMEOUT_SECONDS:
                raise RelayLost(f"no answer for {silent:.0f} s")
            return []
        try:
            messages = ray.get(job.drain)
        except (RayActorError, ActorUnschedulableError) as exc:  # the second: its node is gone
            raise RelayLost(type(exc).__name__) from exc
        finally:
            job.drain = None
        job.emptied_at = job.drain_sent_at if len(messages) < job.drain_limit else None
        return messages

    def _note(self, job: ActiveJob, message: Message) -> None:
        """Keep what the dispatcher itself needs from a message: how to stop the run."""
        match message:
            case Worker(rank=rank, trial=trial, placement_group=group):
                job.workers[rank] = message
                if group:
                    job.placement_groups.add(group)
                if group and trial is not None:
                    job.trial_groups.setdefault(trial, set()).add(group)
            case TrialUpdate(trial=trial, info=info) if TrialStatus(info["status"]).is_final:
                # A trial's Train controller may die with its trial before it removes its
                # workers' group (ASHA stops it, or Tune ends it as it completes), and Ray keeps
                # the group while the dispatcher lives: two such groups held the demo sweep's
                # CPUs until its last trials waited forever (issue 11 item 7).
                ray_runtime.remove_placement_groups(job.trial_groups.pop(trial, set()))
            case PlacementGroup(placement_group=group) if group:
                job.placement_groups.add(group)
            case Controller(controller=controller, trial=trial):
                job.controllers[trial] = controller
            case Fatal(error=error, trial=None):
                job.fatal_error = error

    def _relay_everything(self, job: ActiveJob) -> None:
        """The run is over: store everything it sent, batch by batch, until a drain sent
        after now comes back empty."""
        now = time.monotonic()
        for _ in range(FINAL_DRAIN_BATCHES):
            if self._relay(job, wait_seconds=RELAY_TIMEOUT_SECONDS, since=now):
                return

    def _finish(self, job: ActiveJob) -> None:
        try:
            result = ray.get(job.result)
        except ActorUnavailableError:  # out of reach for now (a network blip): ask again later
            return
        except (RayTaskError, RayActorError, ActorUnschedulableError) as exc:
            if job.direct is not None and self._restarted(job, job.direct, exc):
                return
            self._failed(job, exc)
            return
        self._relay_everything(job)
        if job.fatal_error is not None:
            self.queue.fail(job.lease, job.fatal_error, None, retryable=False)
            self._end_tracker_runs(job.job_id, job.spec, job.lease.claim, RunOutcome.FAILED)
        else:
            workers = [_worker_summary(worker) for worker in job.workers.values()]
            self.queue.complete(job.lease, {**result, "nodes": job.node_ids, "workers": workers})
        self._forget(job)

    def _restarted(self, job: ActiveJob, direct: DirectRun, exc: Exception) -> bool:
        """Start a failed direct run again within the claim, from the newest checkpoint it
        wrote, as Ray Train restarts a worker group: up to `scaling.max_failures` times, not
        for a failure a retry would repeat, nor once its runner name is gone (the head, or
        another dispatcher's takeover, ended it)."""
        if direct.restarts >= job.spec.scaling.max_failures or not is_running_on_ray(job.job_id):
            return False
        if self.queue.is_cancel_requested(job.job_id):
            return False  # `_failed` ends it as the cancel asked
        with suppress(Exception):  # one that only went out of reach must not train on beside
            ray.kill(direct.process, no_restart=True)
        with suppress(RelayLost):  # what the failed process sent, to judge the failure by
            self._relay_everything(job)
        if job.fails_for_good:
            return False
        # The newest checkpoint the store recorded, as a new claim would: its epoch's row is
        # stored too, so the curve has no gap.
        recorded = [c.uri for c in reversed(self.store.checkpoints(job.job_id)) if c.trial is None]
        resume = newest_whole_checkpoint(recorded) or direct.config["resume_from"]
        direct.config = {**direct.config, "resume_from": resume}
        direct.restarts += 1
        current = job.current_groups.get(None)
        if current is not None:  # its late messages never count, whatever the clocks say
            job.replaced_groups.setdefault(None, set()).add(current[0])
        direct.process = start_warm_runner(job.spec.scaling.cpus_per_worker)
        self.pool.hold_off()
        job.result = direct.process.run.remote(direct.config, job.runner)
        job.undelivered.append(
            Log(
                f"[dispatcher {self.dispatcher_id}] its process failed ({_root_cause(exc)}); "
                f"restart {direct.restarts} of {job.spec.scaling.max_failures} "
                f"from {resume or 'the start'}"
            )
        )
        return True

    def _failed(self, job: ActiveJob, exc: Exception) -> None:
        if job.direct is None and not isinstance(exc, RayTaskError):  # lost with its node
            self._interrupt(job, f"its runner was lost: {_root_cause(exc)}")
            return
        if job.direct is not None and not is_running_on_ray(job.job_id):
            self._interrupt(job, "its runner name was lost with the head node or taken over")
            return
        # The run itself failed on Ray: keep the cause for the user.
        with suppress(RelayLost):  # the failure is the run's, whatever became of its relay
            self._relay_everything(job)
        trace = _without_colours("".join(traceback.format_exception(exc)))
        self.queue.fail(job.lease, _root_cause(exc), trace, retryable=not job.fails_for_good)
        # A killed worker (its Ray actor died) closed no tracker.
        self._end_tracker_runs(job.job_id, job.spec, job.lease.claim, RunOutcome.FAILED)
        self._forget(job)

    def _drop(self, job: ActiveJob, reason: str) -> None:
        """Stop our copy of a run we no longer hold, writing nothing more for it."""
        log.warning("job %s: %s; stopping our copy of the run", job.job_id, reason)
        try:
            self._stop_runs([job])
        finally:
            self._forget(job)

    def _halt(self, lease: Lease, reason: str) -> None:
        """Kill the run of a lease we lost, on the lease keeper's thread: at once, even while
        the tick hangs on an unreachable Redis. The tick's `_drop` frees the rest after."""
        job = self.active.get(lease.job_id)
        if job is None or job.lease != lease:  # the run of a later claim is not this one's
            return
        log.warning("job %s: %s; killing our copy of the run", lease.job_id, reason)
        ray.kill(job.runner, no_restart=True)
        if job.direct is not None:
            ray.kill(job.direct.process, no_restart=True)
        for controller in list(job.controllers.values()):
            controller.abort.remote()

    def _interrupt(self, job: ActiveJob, reason: str, relay_alive: bool = True) -> None:
        """Stop a run that lost part of its machinery and hand the job back, no attempt used."""
        log.warning("job %s: %s", job.job_id, reason)
        try:
            self._stop_runs([job])
            until = time.monotonic() + RELAY_TIMEOUT_SECONDS
            if relay_alive and self._store_what_is_left([job], until):
                return  # its lease was lost: another dispatcher holds it already
            self.queue.release(job.lease, reason, interrupted=True)
            self._end_tracker_runs(job.job_id, job.spec, job.lease.claim, RunOutcome.KILLED)
        except LeaseLost:
            pass  # another dispatcher holds it already
        except Exception:  # Redis unreachable: the lease lapses and the reaper hands it back
            log.exception("job %s: could not hand it back", job.job_id)
        finally:
            self._forget(job)

    def _end_reaped_runs(self, job_ids: list[str]) -> None:
        """The reaped jobs' workers died with their dispatcher, before closing any tracker."""
        if not job_ids:  # the usual housekeeping: no round trip to Redis
            return
        for record in self.store.get_many(job_ids):
            outcome = REAPED_OUTCOMES.get(record.status)  # None: claimed again already
            if outcome is not None and record.spec.get("logging", {}).get("mlflow"):
                self._end_tracker_runs(record.id, record.job_spec(), record.claims, outcome)

    def _end_tracker_runs(
        self, job_id: str, spec: JobSpec, claim: int, outcome: RunOutcome
    ) -> None:
        """End the job's MLflow runs up to claim number `claim` still RUNNING, as `outcome`.

        In a thread of its own: a slow tracking server must not hold up the other jobs' leases.
        A daemon, so a dispatcher that stops does not wait for it. Its log lines go unfenced:
        they are about runs that have already ended, whoever owns the job now.
        """
        if spec.logging.mlflow is None:
            return

        def log_line(line: str) -> None:
            self.store.append_log(job_id, f"[dispatcher {self.dispatcher_id}] {line}")

        threading.Thread(
            target=end_open_runs,
            args=(spec, job_id, claim, outcome, log_line),
            name=f"end-mlflow-runs-{job_id}",
            daemon=True,
        ).start()

    def _forget(self, job: ActiveJob) -> None:
        if self.active.get(job.job_id) is job:
            del self.active[job.job_id]
            self.leases.let_go(job.job_id)
        # The runner too, though its run is over: Ray ends it when its last handle goes, and
        # after a Redis restart one outlived its finished job, holding its name, for over a
        # minute. An actor Ray cannot reach any more is gone with its node.
        actors = [job.runner, job.relay] + ([job.direct.process] if job.direct else [])
        for actor in actors:
            with suppress(Exception):
                ray.kill(actor, no_restart=True)

    def _publish_cluster_status(self) -> None:
        status = {
            "dispatcher": self.dispatcher_id,
            "updated_at": time.time(),
            "nodes": ray_runtime.node_summaries(),
            "available": ray_runtime.available_resources(),
            "running_jobs": {job.job_id: job.node_ids for job in self.active.values()},
            "waiting": [asdict(job) for job in self.waiting],
            "demand": self.autoscaler_demand.published(),
            "max_cluster": self.settings.max_cluster.as_text(),
            "redis_full_since": self.redis_full_since,
            "warm_cpus": self.pool.idle_cpus,
        }
        self.store.put_dispatcher_status(
            self.dispatcher_id, status, ttl_seconds=DISPATCHER_STATUS_TTL_SECONDS
        )


def _batch(undelivered: deque[Message]) -> list[Message]:
    """The oldest messages within one tick's bounds (RUN_WRITES_PER_TICK, ..._BYTES_...)."""
    batch: list[Message] = []
    size = 0
    for message in undelivered:
        size += message_bytes(message)
        if batch and (len(batch) >= RUN_WRITES_PER_TICK or size > RUN_WRITE_BYTES_PER_TICK):
            break
        batch.append(message)
    return batch


def _worker_summary(worker: Worker) -> dict[str, Any]:
    return {
        "rank": worker.rank,
        "pid": worker.pid,
        "node_id": worker.node_id,
        "placement_group": worker.placement_group,
        "trial": worker.trial,
    }


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
