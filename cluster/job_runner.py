"""Run one job on Ray: a Ray Train run for `kind: train`, a Ray Tune experiment for sweeps.

Each job runs inside a `JobRunner` actor named after the job. The name is how any dispatcher
asks "is this job still running on Ray?" before requeueing an expired lease, and killing the
actor tears down the whole run (the Train controller and workers it owns) for cancel. The
actor is owned by the dispatcher that started it, so a dispatcher that dies takes its runs with
it; the run's name is the job id under fixed storage, so the next claim resumes from the last
checkpoint (Ray Train V2 restores its checkpoint manager from storage by run name).
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.ray_runtime import NAMESPACE
from jobs.spec import JobSpec, SpecError, missing_tracker_packages
from trainers.ray_adapter import train_loop_per_worker

# Ray Train's controller collects a worker's report only every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
# (2 s by default), and the worker's next report waits until the last one is collected, so
# epochs shorter than that (digits on a laptop: about 1.5 s) idled the rest. Polling four times
# a second costs the controller one small actor call per worker each time. Ray Train hands the
# variable from the process that calls fit() to its controller; an operator's own value wins.
REPORT_POLL_VARIABLE = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_SECONDS = "0.25"


def runner_name(job_id: str) -> str:
    return f"genfleet-job-{job_id}"


def is_running_on_ray(job_id: str) -> bool:
    try:
        ray.get_actor(runner_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def scaling_config(spec: JobSpec) -> ScalingConfig:
    scaling = spec.scaling
    per_worker = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        per_worker["GPU"] = scaling.gpus_per_worker
    return ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker=per_worker,
    )


def build_trainer(
    spec: JobSpec,
    run_name: str,
    storage: str,
    loop_config: dict[str, Any],
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """The TorchTrainer for one run; DDP backend gloo on CPU, nccl on GPU (Ray's default)."""
    os.environ.setdefault(REPORT_POLL_VARIABLE, REPORT_POLL_SECONDS)
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            **loop_config,
            "spec": spec.model_dump(mode="json"),
            "run_dir": f"{storage.rstrip('/')}/{run_name}",
        },
        scaling_config=scaling_config(spec),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


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
    ) -> dict[str, Any]:
        spec = JobSpec.model_validate(spec_json)
        missing = missing_tracker_packages(spec.logging)
        if missing:
            # The client checked where the spec was submitted; this cluster may still lack the
            # extra, and every retry would too: a fatal report fails the job without one.
            ray.get(relay.put.remote("fatal", {"trial": None, "error": str(SpecError(missing))}))
            return {}
        loop_config = {
            "relay": relay,
            "data_dir": data_dir,
            "job_id": job_id,  # the job and its attempt tag its MLflow runs
            "attempt": attempt,
            "trial": None,
        }
        if spec.kind == "sweep":
            from cluster.sweep import run_sweep  # Tune is only imported for sweeps

            return run_sweep(job_id, spec, loop_config, storage)
        result = build_trainer(spec, job_id, storage, loop_config).fit()
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
    job_id: str, attempt: int, spec: JobSpec, relay: Any, storage: str, data_dir: str
) -> tuple[Any, ray.ObjectRef]:
    runner = JobRunner.options(name=runner_name(job_id), namespace=NAMESPACE).remote()
    spec_json = spec.model_dump(mode="json")
    result = runner.run.remote(job_id, attempt, spec_json, relay, storage, data_dir)
    return runner, result


def _plain_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        key: value for key, value in (metrics or {}).items() if isinstance(value, int | float | str)
    }
