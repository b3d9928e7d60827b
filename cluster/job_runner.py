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

import os
import time
from typing import Any

import pyarrow.fs
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.ray_runtime import NAMESPACE, on_the_head
from jobs.messages import Fatal
from jobs.run_storage import located
from jobs.spec import JobSpec, SpecError, missing_tracker_packages
from trainers.checkpoint import STATE_FILE
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
    loop_config: dict[str, Any],
    *,
    run_dir: str,
    storage_path: str,
    run_name: str,
    keep_checkpoints: int | None,
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """The TorchTrainer for one run; DDP backend gloo on CPU, nccl on GPU (Ray's default).

    Ray Train keeps the run's newest `keep_checkpoints` checkpoints (None: all of them) in
    `storage_path/run_name`, each epoch's in a folder named after it; the trackers write under
    `run_dir`.
    """
    os.environ.setdefault(REPORT_POLL_VARIABLE, REPORT_POLL_SECONDS)
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={
            **loop_config,
            "spec": spec.model_dump(mode="json"),
            "run_dir": run_dir,
            "checkpoint_root": f"{storage_path.rstrip('/')}/{run_name}",
        },
        scaling_config=scaling_config(spec),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=spec.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=callbacks,
        ),
    )


CLAIM_PREFIX = "claim-"  # claim N of a run trains in its folder's claim-N


def run_folder(storage: str, job_id: str) -> str:
    """Where a train job's claims train, each in a `CLAIM_PREFIX` folder of its own."""
    return f"{storage.rstrip('/')}/{job_id}"


def claim_trainer(
    spec: JobSpec,
    loop_config: dict[str, Any],
    run_dir: str,
    recorded: list[str],
    keep_checkpoints: int | None,
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """The TorchTrainer of one claim of a job or a sweep trial, whose folder is `run_dir`.

    Each claim trains in `run_dir/claim-N` of its own: a copy of the run that lost its lease
    and still runs (its node cut off) never writes where the new owner does. A claim starts
    from the newest of `recorded` (newest first) still whole: only a lease holder records one.
    """
    return build_trainer(
        spec,
        {**loop_config, "resume_from": newest_whole_checkpoint(recorded)},
        run_dir=run_dir,
        storage_path=run_dir,
        run_name=f"{CLAIM_PREFIX}{loop_config['attempt']}",
        keep_checkpoints=keep_checkpoints,
        callbacks=callbacks,
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
        recorded: dict[str | None, list[str]],
    ) -> dict[str, Any]:
        """`recorded`: the job's recorded checkpoints by trial (None: the job's), newest
        first."""
        spec = JobSpec.model_validate(spec_json)
        missing = missing_tracker_packages(spec.logging)
        if missing:
            # The client checked where the spec was submitted; this cluster may still lack the
            # extra, and every retry would too: a fatal report fails the job without one.
            ray.get(relay.put.remote(Fatal(str(SpecError(missing)))))
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

            return run_sweep(job_id, spec, loop_config, storage, recorded)
        run_dir = run_folder(storage, job_id)
        # None: the dispatcher prunes (cluster/checkpoint_pruning.py).
        result = claim_trainer(spec, loop_config, run_dir, recorded.get(None, []), None).fit()
        return {
            "metrics": _plain_metrics(result.metrics),
            "checkpoint": _as_uri(result.checkpoint.path, storage) if result.checkpoint else None,
            "storage": _as_uri(result.path, storage),
        }


def newest_whole_checkpoint(recorded: list[str]) -> str | None:
    """The first of `recorded` (newest first) whose state file is still in storage.

    Chosen once for every rank of the claim. One may be gone: a copy of the run that went on
    after losing its lease wrote and pruned checkpoints nobody recorded.
    """
    for uri in recorded:
        filesystem, path = located(uri)
        if filesystem.get_file_info(f"{path}/{STATE_FILE}").type == pyarrow.fs.FileType.File:
            return uri
    return None


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
) -> tuple[Any, ray.ObjectRef]:
    """Start the job's runner; ValueError when a runner of the job still exists.

    `attempt` is the claim number, which tags the run's MLflow runs and names its checkpoint
    folder: it grows with every claim. `recorded`: the job's recorded checkpoints by trial,
    newest first.
    """
    runner = JobRunner.options(
        name=runner_name(job_id), namespace=NAMESPACE, scheduling_strategy=on_the_head()
    ).remote()
    spec_json = spec.model_dump(mode="json")
    result = runner.run.remote(job_id, attempt, spec_json, relay, storage, data_dir, recorded)
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
