"""`genfleet evaluate --cluster`: the same evaluation as a Ray task, its progress relayed back.

The task reads the checkpoint and the data where the cluster's nodes see them: the shared
storage and GENFLEET_DATA_DIR, as every run does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.queue import Empty, Queue

from cluster.checkpoint_evaluation import Target, evaluate_target
from cluster.cli_errors import UserError
from cluster.ray_runtime import connect_ray
from jobs.settings import Settings
from jobs.spec import Split

PROGRESS_POLL_SECONDS = 0.2


def evaluate_on_cluster(
    target: Target,
    split: Split,
    iw_samples: int | None,
    settings: Settings,
    on_batch: Callable[[int, int], None],
) -> dict[str, Any]:
    connect_ray(settings.ray_address)
    progress: Queue = Queue()
    gpus = 1 if target.spec is not None and target.spec.scaling.use_gpu else 0
    task = ray.remote(_evaluate).options(num_cpus=1, num_gpus=gpus)
    result = task.remote(target, settings.data_dir, split, iw_samples, progress)
    try:
        while not ray.wait([result], timeout=PROGRESS_POLL_SECONDS)[0]:
            _show_progress(progress, on_batch)
        evaluated = ray.get(result)
        _show_progress(progress, on_batch)  # the task put its last position before returning
        return evaluated
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):  # a bad checkpoint, dataset or option: one line
            raise exc.cause from None
        raise
    finally:
        progress.shutdown()


def _evaluate(
    target: Target, data_dir: Path, split: Split, iw_samples: int | None, progress: Queue
) -> dict[str, Any]:
    def relay(batch: int, batches: int) -> None:
        progress.put_nowait((batch, batches))

    return evaluate_target(target, data_dir, split, iw_samples, relay)


def _show_progress(progress: Queue, on_batch: Callable[[int, int], None]) -> None:
    """Only the newest position matters to a bar: drain the queue, show the last one."""
    latest = None
    try:
        while True:
            latest = progress.get_nowait()
    except Empty:
        pass
    if latest is not None:
        on_batch(*latest)
