"""Fill a real Redis with what the dashboard shows, through the real queue and store.

Jobs go through submit -> claim -> metrics/images/logs -> complete, as a dispatcher would
drive them, so the pages are tested against records the queue itself wrote.
"""

from __future__ import annotations

import io
import time
from functools import cache
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from jobs.queue import ClaimedJob, JobQueue
from jobs.records import JobStatus, Lease
from jobs.scheduling import Demand
from jobs.spec import JobSpec
from jobs.store import JobStore

WORKER = "seed-worker"


def spec(name: str = "seed-job", model: str = "pixelcnn", **sections: Any) -> JobSpec:
    """A small valid spec; `sections` replace whole top-level keys (train=..., sweep=...)."""
    data: dict[str, Any] = {
        "name": name,
        "model": {"type": model},
        "data": {"dataset": "digits"},
        "train": {"epochs": 3},
    }
    data.update(sections)
    if "sweep" in sections:
        data["kind"] = "sweep"
    return JobSpec.model_validate(data)


@cache
def _digit_cells() -> np.ndarray:
    digits = load_digits().images[:16] / 16.0  # (16, 8, 8) in [0, 1]
    return digits.reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)  # 4x4 grid


def sample_grid_png(epoch: int, seed: int = 0) -> bytes:
    """A 4x4 grid of 8x8 digits emerging from the same noise as epochs pass, like a
    fixed-seed sample grid does while a model learns (32x32 grey pixels, 4x upscaled)."""
    noise = np.random.default_rng(seed).random((32, 32))
    weight = min(epoch / 5.0, 1.0)
    pixels = ((1 - weight) * noise + weight * _digit_cells()) * 255
    image = Image.fromarray(pixels.astype(np.uint8), mode="L").resize((128, 128), Image.NEAREST)
    output = io.BytesIO()
    image.save(output, format="PNG")
    return output.getvalue()


TEST_GAP = 0.05  # seeded test bits/dim sit this far above val


def metrics_row(epoch: int, offset: float = 0.0, last: bool = False) -> dict[str, float | int]:
    """One epoch's row; the last epoch's also holds test bits/dim, as the loop reports it."""
    val = 3.2 / epoch + 1.1 + offset
    row: dict[str, float | int] = {
        "epoch": epoch,
        "step": epoch * 20,
        "train_bits_per_dim": 3.0 / epoch + 1.0 + offset,
        "val_bits_per_dim": val,
    }
    return {**row, "test_bits_per_dim": val + TEST_GAP} if last else row


def claim_submitted(queue: JobQueue, job_spec: JobSpec) -> ClaimedJob:
    """Submit and claim at once; the caller seeds claims before any other queued job waits."""
    job_id = queue.submit(job_spec)
    claimed = queue.claim(WORKER, lease_seconds=600)
    assert claimed is not None and claimed.job_id == job_id, "another queued job was claimed"
    return claimed


def seeded_lease(store: JobStore, job_id: str) -> Lease:
    """The lease the seed holds on a job it left running, to finish it later as its dispatcher."""
    record = store.get(job_id)
    assert (record.status, record.owner) == (JobStatus.RUNNING, WORKER), "not a seeded running job"
    return Lease(job_id, WORKER, record.claims)


def seed_trained_job(
    queue: JobQueue,
    store: JobStore,
    name: str = "trained",
    epochs: int = 3,
    image_names: tuple[str, ...] = ("samples",),
    finish: bool = True,
    offset: float = 0.0,
) -> str:
    """A job with a metrics row, an image per name, a log line and a checkpoint per epoch."""
    claimed = claim_submitted(queue, spec(name, train={"epochs": epochs}))
    job_id = claimed.job_id
    for epoch in range(1, epochs + 1):
        store.append_metrics(job_id, metrics_row(epoch, offset, last=finish and epoch == epochs))
        for image_name in image_names:
            store.put_image(job_id, image_name, epoch, sample_grid_png(epoch))
        store.append_log(job_id, f"epoch {epoch}: val_bits_per_dim {3.2 / epoch + 1.1:.3f}")
        store.add_checkpoint(job_id, epoch, f"file:///storage/{job_id}/epoch-{epoch}")
    if finish:
        result = {"val_bits_per_dim": 3.2 / epochs + 1.1}
        assert queue.complete(claimed.lease, result) is JobStatus.SUCCEEDED
    return job_id


def seed_sweep(
    queue: JobQueue, store: JobStore, trial_metrics: list[float | None], finish: bool = False
) -> str:
    """A sweep whose trials end at `trial_metrics`; a None trial was stopped before any
    evaluation, and the first trial was stopped early by ASHA after epoch 1. Completed trials
    report test bits/dim TEST_GAP above their metric; a finished sweep names its best."""
    sweep = {"space": {"train.lr": {"loguniform": [0.0001, 0.01]}}}
    claimed = claim_submitted(queue, spec("sweep", sweep=sweep))
    job_id = claimed.job_id
    for index, metric in enumerate(trial_metrics):
        trial_id = f"trial_{index:02d}"
        stopped = metric is None or index == 0
        epochs = 1 if stopped else 3
        store.put_trial(
            job_id,
            trial_id,
            {
                "config": {
                    "train.lr": 10.0 ** -(2 + index),
                    "model.params.channels": 16 * (index + 1),
                },
                "status": "stopped" if stopped else "completed",
                "metric": metric,
                "test_metric": None if stopped else metric + TEST_GAP,
                "iterations": epochs,
                "reason": "stopped early by ASHA after epoch 1" if stopped else None,
            },
        )
        for epoch in range(1, epochs + 1):
            # The curve ends at the trial's metric, as Tune's last result does.
            offset = (metric or 3.0) - metrics_row(epochs)["val_bits_per_dim"]
            row = metrics_row(epoch, offset, last=not stopped and epoch == epochs)
            store.append_metrics(job_id, row, trial=trial_id)
            store.put_image(job_id, "samples", epoch, sample_grid_png(epoch), trial=trial_id)
    if finish:
        scored = [(m, i) for i, m in enumerate(trial_metrics) if m is not None and i > 0]
        best_metric, best_index = min(scored)
        summary = {
            "best_trial": f"trial_{best_index:02d}",
            "best_config": {"train.lr": 10.0 ** -(2 + best_index)},
            "best_metric": best_metric,
            "metric": "val_bits_per_dim",
            "best_test_metric": best_metric + TEST_GAP,
            "test_metric": "test_bits_per_dim",
        }
        assert queue.complete(claimed.lease, summary) is JobStatus.SUCCEEDED
    return job_id


def seed_cluster(
    store: JobStore,
    jobs_by_dispatcher: dict[str, list[str]],
    waiting: dict[str, str] | None = None,
    demand: Demand | None = None,
    redis_full_since: float | None = None,
) -> None:
    """One status per dispatcher (dispatcher id -> the jobs it runs), shaped as
    cluster/dispatcher.py publishes them: each sees the same three nodes, runs its jobs on the
    head and sees the same `waiting` jobs (id -> reason); `demand` is the one each last sent;
    `redis_full_since`, when each saw Redis refuse a write for memory."""
    for dispatcher_id, job_ids in jobs_by_dispatcher.items():
        status = {
            "dispatcher": dispatcher_id,
            "updated_at": time.time(),
            "nodes": [
                {"node_id": "head", "address": "10.0.0.1", "alive": True, "cpus": 8.0,
                 "gpus": 1.0, "memory_gb": 31.2},
                {"node_id": "worker-1", "address": "10.0.0.2", "alive": True, "cpus": 16.0,
                 "gpus": 0.0, "memory_gb": 62.5},
                {"node_id": "worker-2", "address": "10.0.0.3", "alive": False, "cpus": 16.0,
                 "gpus": 0.0, "memory_gb": 62.5},
            ],
            "available": {"cpus": 21.0, "gpus": 0.0},
            "running_jobs": {job_id: ["head"] for job_id in job_ids},
            "waiting": [
                {"job_id": job_id, "reason": reason} for job_id, reason in (waiting or {}).items()
            ],
            "demand": None if demand is None else demand.as_json(),
            "max_cluster": "gpus=8",
            "redis_full_since": redis_full_since,
        }  # fmt: skip
        # A seeded dispatcher never publishes again: it must outlive a slow test module.
        store.put_dispatcher_status(dispatcher_id, status, ttl_seconds=3600)


def seed_queued_jobs(queue: JobQueue, count: int, name: str = "queued") -> list[str]:
    models = ("pixelcnn", "vae", "dcgan", "pixelrnn_row")
    specs = [spec(f"{name}-{model}", model) for model in models]
    return [queue.submit(specs[index % len(specs)]) for index in range(count)]


def status_of(store: JobStore, job_id: str) -> JobStatus:
    return store.get(job_id).status
