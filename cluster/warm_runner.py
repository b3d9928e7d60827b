"""Warm starts: a one-worker CPU run trains in a pre-started process, with no Ray Train group.

Of a one-worker job's 10 s from submit to its first step on two cores, Ray Train's start-up (a
controller actor, then a worker group, each a new process importing Ray Train and torch) took
9 s (issue 14). A `WarmRunner` has imported torch and the trainers before its job exists, and
trains it in its own process (cluster/train_worker.py's `train_directly`). Multi-worker and GPU
runs stay Ray Train (DDP, its FailureConfig); the dispatcher restarts a direct run whose
process died up to `scaling.max_failures` times from its newest recorded checkpoint, as Ray
Train restarts a worker group. One-worker sweep trials train directly in their Tune trial
actors (cluster/sweep.py), not here.

Each dispatcher keeps `GENFLEET_WARM_RUNNERS` idle runners of the default shape (1 CPU, no GPU),
each with a fresh relay, and publishes the CPUs they hold so that other dispatchers do not count
them free. It starts them only with CPUs free both to Ray and to its count of the running jobs'
needs, not for a while after a run started (whose workers may not hold their CPUs yet), and
gives them up while any job waits for resources (`retire`) and before any run it starts
without one. A run of another shape starts cold, still without Ray Train.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from cluster.relay import Relay
from cluster.train_worker import train_directly
from jobs.spec import JobSpec
from trainers.loop import RunContext, train_job
from trainers.reporter import FolderReporter

WARM_CPUS = 1.0  # the pool's shape: ScalingSpec's default cpus_per_worker
# A new runner's start-up (imports, warm-up) took as much CPU as the run that had just taken the
# last one needed for its own start, and doubled that run's time to its first step on two cores.
REFILL_AFTER_SECONDS = 10.0
WATCH_RETRY_SECONDS = 1.0


def runs_directly(spec: JobSpec) -> bool:
    """Whether the job's runs (a train job's, each trial of a sweep) train in one process rather
    than a Ray Train group: one CPU worker, the same for every trial."""
    scaling = spec.scaling
    tuned = spec.sweep.space if spec.sweep is not None else {}
    return (
        scaling.num_workers == 1
        and not scaling.use_gpu
        and not any(path.startswith("scaling.") for path in tuned)
    )


# A throwaway run each runner trains as it starts: the first run in a process took 1.6 s where
# the next took 0.2 s (lazy imports, the dataset's first load, torch's first kernels; PixelCNN
# on digits, two cores). Digits is bundled with scikit-learn, so it needs no download.
WARM_UP_SPEC = {
    "name": "warm-up",
    "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
    "data": {"dataset": "digits"},
    "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 1, "num_samples": 1},
}


@ray.remote(max_restarts=0)
class WarmRunner:
    """One process for one direct run, started before the run is known. Its module's imports
    (torch, the trainers, Ray Train) happen as it starts; `__init__` trains `WARM_UP_SPEC`."""

    def __init__(self) -> None:
        with tempfile.TemporaryDirectory(prefix="genfleet-warm-up-") as scratch:
            folder = Path(scratch)
            context = RunContext(data_dir=folder / "data", checkpoint_dir=folder / "checkpoints")
            train_job(JobSpec.model_validate(WARM_UP_SPEC), FolderReporter(folder / "out"), context)

    def run(self, config: dict[str, Any], name: Any) -> dict[str, Any]:
        """Train the run; `name` is its `RunName` (cluster/run_name.py), whose end ends it."""
        threading.Thread(target=_exit_without, args=(name,), daemon=True).start()
        return train_directly(config)


def _exit_without(name: Any) -> None:
    """Exit this process once `name` is gone: a dispatcher that took the job over killed it.
    Only for good: an actor out of reach for a moment (a network blip) is asked again."""
    while True:
        try:
            ray.get(name.until_killed.remote())
        except ray.exceptions.ActorDiedError:
            os._exit(1)
        except Exception:  # unavailable for now, or the call was lost with a connection
            time.sleep(WATCH_RETRY_SECONDS)


def start_warm_runner(cpus: float) -> Any:
    return WarmRunner.options(num_cpus=cpus).remote()


@dataclass
class Warm:
    runner: Any
    relay: Any
    ready: ray.ObjectRef  # the runner's start-up (its imports and warm-up), done or to come

    def failed(self) -> bool:
        """Whether the runner died, as it started or since (its node lost, say)."""
        done, _ = ray.wait([self.ready], timeout=0)
        if not done:
            return False
        try:
            ray.get(done[0])
        except Exception:
            return True
        return False


class WarmPool:
    """A dispatcher's idle warm runners, each with the relay its run will use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Warm] = []
        self._held_off_at = -math.inf  # monotonic: the last run started

    @property
    def idle_cpus(self) -> float:
        return WARM_CPUS * len(self._idle)

    def take(self, spec: JobSpec) -> Warm | None:
        """An idle runner for the job, alive, if its shape is the pool's."""
        self.hold_off()
        self.drop_failed()
        if not self._idle or spec.scaling.cpus_per_worker != WARM_CPUS:
            return None
        return self._idle.pop(0)

    @property
    def wants_runners(self) -> bool:
        """Whether `refill` would start any now: the pool is short and not held off."""
        held_off = time.monotonic() - self._held_off_at < REFILL_AFTER_SECONDS
        return len(self._idle) < self.size and not held_off

    def hold_off(self) -> None:
        """A run starts: no refill for REFILL_AFTER_SECONDS, so that a new runner neither takes
        the CPUs it has yet to place (a Train run's workers, a restart) nor slows its start."""
        self._held_off_at = time.monotonic()

    def refill(self, free_cpus: float, head: Any) -> None:
        """Start runners up to the pool's size with `free_cpus` (free to Ray and to the
        dispatcher's count of the running jobs' needs); relays on the head."""
        self.drop_failed()
        while self.wants_runners and free_cpus >= WARM_CPUS:
            free_cpus -= WARM_CPUS
            relay = Relay.options(scheduling_strategy=head).remote()
            runner = start_warm_runner(WARM_CPUS)
            self._idle.append(Warm(runner, relay, runner.__ray_ready__.remote()))

    def drop_failed(self) -> None:
        """Forget (and kill) idle runners that died: a lost node, a failed warm-up."""
        failed = [warm for warm in self._idle if warm.failed()]
        self._idle = [warm for warm in self._idle if warm not in failed]
        _kill(failed)

    def wait_ready(self, timeout: float) -> bool:
        """Whether the pool is full of runners done with their imports within `timeout` s."""
        deadline = time.monotonic() + timeout
        while len(self._idle) < self.size and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = list(self._idle)
        left = max(0.0, deadline - time.monotonic())
        ray.wait([warm.ready for warm in idle], num_returns=len(idle), timeout=left)
        return len(idle) == self.size and not any(warm.failed() for warm in idle)

    def retire(self) -> None:
        """Give every idle runner's CPUs back to Ray, for a while (see `hold_off`)."""
        self.hold_off()
        idle, self._idle = self._idle, []
        _kill(idle)


def _kill(pool: list[Warm]) -> None:
    for warm in pool:
        for actor in (warm.runner, warm.relay):
            with suppress(Exception):
                ray.kill(actor, no_restart=True)
