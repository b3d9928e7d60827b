"""The TorchTrainer of one run: a train job's claim or a sweep trial's, each in a folder of its
own, starting from the newest checkpoint the store recorded that is still whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.train_worker import train_loop_per_worker
from jobs.run_storage import located
from jobs.spec import JobSpec
from trainers.checkpoint import FOLDER_PREFIX, STATE_FILE, checkpoint_folder

# Ray Train's controller collects a worker's report only every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
# (2 s by default), and the worker's next report waits until the last one is collected, so
# epochs shorter than that (digits on a laptop: about 1.5 s) idled the rest. Polling four times
# a second costs the controller one small actor call per worker each time. Ray Train hands the
# variable from the process that calls fit() to its controller; an operator's own value wins.
REPORT_POLL_VARIABLE = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_SECONDS = "0.25"


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


def run_loop_config(job_id: str, attempt: int, relay: Any, data_dir: str) -> dict[str, Any]:
    """What every run of the job's claim `attempt` hands the training loop on Ray."""
    return {
        "relay": relay,
        "data_dir": data_dir,
        "job_id": job_id,  # the job and its attempt tag its MLflow runs
        "attempt": attempt,
        "trial": None,
    }


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
        run_name=claim_folder_name(loop_config["attempt"]),
        keep_checkpoints=keep_checkpoints,
        callbacks=callbacks,
    )


def claim_folder_name(claim: int) -> str:
    return f"{CLAIM_PREFIX}{claim}"


def direct_run_config(
    spec: JobSpec, loop_config: dict[str, Any], run_dir: str, recorded: list[str]
) -> dict[str, Any]:
    """What `train_directly` needs for one claim of a one-worker job: the folders and the
    checkpoint to start from that `claim_trainer` gives a Train run."""
    return {
        **loop_config,
        "spec": spec.model_dump(mode="json"),
        "run_dir": run_dir,
        "checkpoint_root": f"{run_dir.rstrip('/')}/{claim_folder_name(loop_config['attempt'])}",
        "resume_from": newest_whole_checkpoint(recorded),
    }


def newest_in_claim(checkpoint_root: str) -> str | None:
    """The newest whole checkpoint a direct run of this claim wrote: where its restart resumes,
    as Ray Train resumes a restarted worker group from the newest one it persisted."""
    filesystem, root = located(checkpoint_root)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    epochs = sorted(
        (
            int(info.base_name.removeprefix(FOLDER_PREFIX))
            for info in found
            if info.type == pyarrow.fs.FileType.Directory
            and info.base_name.removeprefix(FOLDER_PREFIX).isdigit()
        ),
        reverse=True,
    )
    root_uri = checkpoint_root.rstrip("/")
    folders = [checkpoint_folder(Path(), epoch).name for epoch in epochs]
    return newest_whole_checkpoint([f"{root_uri}/{folder}" for folder in folders])


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
