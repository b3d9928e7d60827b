"""`genfleet run-local SPEC.yaml`: one train spec in this process, no Redis, no Ray.

Writes what a cluster run would report into `out_dir`: info.json, metrics.jsonl, log.txt,
samples/*.png and checkpoints/epoch-NNNN/; TensorBoard event files in tensorboard/ when the
spec's `logging` turns TensorBoard on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jobs.spec import JobSpec
from trainers.loop import RunContext, train_job
from trainers.reporter import FolderReporter
from trainers.trackers import TrackedRun, TrackingReporter, build_trackers


def run_local(
    spec: JobSpec,
    out_dir: Path,
    data_dir: Path,
    progress: bool,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train `spec` here and return its last epoch's metrics; a progress bar when `progress`."""
    if spec.kind != "train":
        raise ValueError(f"kind: run-local runs train specs, got {spec.kind!r}")
    use_gpu = spec.scaling.use_gpu and torch.cuda.is_available()
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    task = bar.add_task("train", total=None, epoch=0)

    def show_batch(epoch: int, batch: int, batches: int) -> None:
        bar.update(task, completed=batch, total=batches, epoch=epoch)

    def echo(line: str) -> None:
        console.print(line, markup=False, highlight=False)  # metric lines hold literal [ ]

    reporter = FolderReporter(out_dir, echo=echo)
    run = TrackedRun(tensorboard_dir=str(out_dir / "tensorboard"))
    trackers = build_trackers(spec, run, reporter.log, is_main=True)
    with bar, first_interrupt_stops(echo) as stop, TrackingReporter(reporter, trackers) as tracked:
        context = RunContext(
            data_dir=data_dir,
            checkpoint_dir=out_dir / "checkpoints",
            device=torch.device("cuda" if use_gpu else "cpu"),
            resume_from=resume_from,
            on_batch=show_batch,
            should_stop=stop.is_set,
        )
        return train_job(spec, tracked, context)


@contextmanager
def first_interrupt_stops(echo: Callable[[str], None]) -> Iterator[threading.Event]:
    """An event the first Ctrl-C sets, so the run stops between two steps (raising
    `TrainingCancelled`) with its checkpoints whole; a second Ctrl-C interrupts at once.

    Only the main thread can take signals; elsewhere the event is never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_interrupt(signum: int, frame: object) -> None:
        stop.set()
        echo("stopping after this step; Ctrl-C again stops at once")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
