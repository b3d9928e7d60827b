"""Run one job on Ray: a Ray Train run for `kind: train`, a Ray Tune experiment for sweeps.

Each job runs inside a `JobRunner` actor named after the job. The name is how any dispatcher
asks "is this job still running on Ray?" before requeueing an expired lease, and killing the
actor tears down the whole run (the Train controller and workers it owns) for cancel. The
actor is owned by the dispatcher that started it, so a dispatcher that dies takes its runs with
it. A train job's claim N trains in `<storage>/<job id>/claim-N` and starts from the newest
checkpoint the store recorded for the job, which only a holder of its lease can record; a
worker that Ray Train restarts within the claim resumes from the claim's own checkpoints. A
sweep resumes through Tune's restore of `<storage>/<job id>`, and each trial it runs again the
same way, in `<storage>/<job id>-<trial id>/claim-N`.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from cluster.ray_runtime import NAMESPACE, on_the_head
from cluster.run_name import RunName
from cluster.train_run import claim_trainer, run_folder, run_loop_config
from cluster.train_worker import lacks_tracker_packages
from jobs.spec import JobSpec


def runner_name(job_id: str) -> str:
    return f"genfleet-job-{job_id}"


def hold_run_name(job_id: str) -> Any:
    """The job's runner name, for a run a warm runner trains; ValueError while it is taken."""
    return RunName.options(
        name=runner_name(job_id), namespace=NAMESPACE, scheduling_strategy=on_the_head()
    ).remote()


def is_running_on_ray(job_id: str) -> bool:
    try:
        ray.get_actor(runner_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


@ray.remote(num_cpus=0, max_restarts=0)
class JobRunner:
    """Drives one job's Ray Train run or Tune experiment from inside the cluster."""

    def run(
        self,
        job_id: str,
        attempt: int,
        spec_json: dict[str, Any],
        relay: Any,
        storage: str,
        data_dir: str,
        recorded: dict[str | None, list[str]],
        direct_trials: bool,
    ) -> dict[str, Any]:
        """`recorded`: the job's recorded checkpoints by trial (None: the job's), newest
        first; `direct_trials`: a sweep's trials train in their trial actors, not Ray Train."""
        spec = JobSpec.model_validate(spec_json)
        if lacks_tracker_packages(spec, relay):
            return {}
        loop_config = run_loop_config(job_id, attempt, relay, data_dir)
        if spec.kind == "sweep":
            from cluster.sweep import run_sweep  # Tune is only imported for sweeps

            return run_sweep(job_id, spec, loop_config, storage, recorded, direct_trials)
        run_dir = run_folder(storage, job_id)
        # None: the dispatcher prunes (cluster/checkpoint_pruning.py).
        result = claim_trainer(spec, loop_config, run_dir, recorded.get(None, []), None).fit()
        return {
            "metrics": _plain_metrics(result.metrics),
            "checkpoint": _as_uri(result.checkpoint.path, storage) if result.checkpoint else None,
            "storage": _as_uri(result.path, storage),
        }


def _as_uri(path: str, storage: str) -> str:
    """Ray reports paths inside object storage without their scheme (`bucket/run/...`); put
    back the storage's, so `genfleet evaluate JOB` can read the checkpoint where it lies."""
    scheme, found, _ = storage.partition("://")
    return f"{scheme}://{path}" if found and "://" not in path else path


def start_runner(
    job_id: str,
    attempt: int,
    spec: JobSpec,
    relay: Any,
    storage: str,
    data_dir: str,
    recorded: dict[str | None, list[str]],
    direct_trials: bool,
) -> tuple[Any, ray.ObjectRef]:
    """Start the job's runner; ValueError when a runner of the job still exists.

    `attempt` is the claim number, which tags the run's MLflow runs and names its checkpoint
    folder: it grows with every claim. `recorded`: the job's recorded checkpoints by trial,
    newest first. `direct_trials`: as `JobRunner.run`'s.
    """
    runner = JobRunner.options(
        name=runner_name(job_id), namespace=NAMESPACE, scheduling_strategy=on_the_head()
    ).remote()
    spec_json = spec.model_dump(mode="json")
    result = runner.run.remote(
        job_id, attempt, spec_json, relay, storage, data_dir, recorded, direct_trials
    )
    return runner, result


def stop_stale_runner(job_id: str, timeout_seconds: float) -> bool:
    """Kill the job's runner left from an older lease; True once its name is free.

    The runner owns the run's Train controller and workers, which Ray ends with it.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            ray.kill(ray.get_actor(runner_name(job_id), namespace=NAMESPACE), no_restart=True)
        except ValueError:  # no actor by that name (any more)
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _plain_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        key: value for key, value in (metrics or {}).items() if isinstance(value, int | float | str)
    }
