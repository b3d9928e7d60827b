"""Where the training loop sends what it produces: run info, metrics, images, checkpoints, logs.

The loop calls `metrics` on every rank (Ray Train wants a report from each worker) and the
other methods on rank 0 only. `checkpoint` for an epoch comes before that epoch's `metrics`, so
a reporter can attach the checkpoint to the metrics it reports (as `ray.train.report` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def info(self, info: dict[str, Any]) -> None: ...

    def metrics(self, metrics: dict[str, Any]) -> None: ...

    def image(self, name: str, epoch: int, png: bytes) -> None: ...

    def checkpoint(self, epoch: int, path: Path) -> None: ...

    def log(self, line: str) -> None: ...


class FolderReporter:
    """Writes info.json, metrics.jsonl, samples/<name>-epoch<NNN>.png and log.txt to a folder.

    `echo` (e.g. print) also receives every log line and a one-line summary of each epoch.
    """

    def __init__(self, out_dir: Path, echo: Callable[[str], None] | None = None) -> None:
        self.out_dir = out_dir
        self.echo = echo
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)

    def info(self, info: dict[str, Any]) -> None:
        (self.out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        self.log("run info: " + json.dumps(info))

    def metrics(self, metrics: dict[str, Any]) -> None:
        with (self.out_dir / "metrics.jsonl").open("a") as stream:
            stream.write(json.dumps(metrics) + "\n")
        if self.echo is not None:
            self.echo(format_metrics(metrics))

    def image(self, name: str, epoch: int, png: bytes) -> None:
        (self.out_dir / "samples" / image_file_name(name, epoch)).write_bytes(png)

    def checkpoint(self, epoch: int, path: Path) -> None:
        self.log(f"checkpoint of epoch {epoch} saved in {path}")

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with (self.out_dir / "log.txt").open("a") as stream:
            stream.write(f"{stamp} {line}\n")
        if self.echo is not None:
            self.echo(line)


def image_file_name(name: str, epoch: int) -> str:
    """`samples-epoch003.png`: one grid's file name, wherever a reporter or tracker keeps it."""
    return f"{name}-epoch{epoch:03d}.png"


def format_metrics(metrics: dict[str, Any]) -> str:
    """`epoch 3 step 60 lr 0.001 train_loss 1.234 ...`: floats to 4 significant digits."""
    parts = []
    for key, value in metrics.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key} {shown}")
    return "  ".join(parts)
