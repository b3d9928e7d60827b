"""Every model through the one training loop on `digits`: training speed and the score it reaches.

    .venv/bin/python bench/models_bench.py --steps 200

Each model trains with its default params (jobs/model_params.py) and its default train recipe
(jobs/recipes.py; batch 64, DCGAN's own Adam betas) for `--steps` batches, then is evaluated once
on the whole val set (180 images). Prints one markdown table. Steps/s counts training time only
(not evaluation, sampling or checkpoints).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from jobs.model_params import PARAMS_BY_MODEL
from jobs.spec import JobSpec
from trainers.loop import RunContext, train_job

TRAIN_BATCHES_PER_EPOCH = (
    22  # digits: 1455 train images (beside val and test) in full batches of 64
)


class BenchReporter:
    """Keeps what the table needs; the loop's images and checkpoints go nowhere."""

    def __init__(self) -> None:
        self.run_info: dict[str, Any] = {}
        self.epochs: list[dict[str, Any]] = []

    def info(self, info: dict[str, Any]) -> None:
        self.run_info = info

    def metrics(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)

    def image(self, name: str, epoch: int, png: bytes) -> None:
        del name, epoch, png

    def checkpoint(self, epoch: int, path: Path) -> None:
        del epoch, path

    def log(self, line: str) -> None:
        del line


def bench_spec(model_type: str, steps: int) -> JobSpec:
    epochs = math.ceil(steps / TRAIN_BATCHES_PER_EPOCH)
    return JobSpec.model_validate(
        {
            "name": f"bench-{model_type}",
            "model": {"type": model_type},
            "data": {"dataset": "digits"},
            "train": {
                "epochs": epochs,
                "max_steps_per_epoch": math.ceil(steps / epochs),
                "eval_every": epochs,
                "sample_every": epochs,
                "checkpoint_every": epochs,
            },
        }
    )


def bench_model(model_type: str, steps: int, work_dir: Path) -> dict[str, Any]:
    spec = bench_spec(model_type, steps)
    reporter = BenchReporter()
    context = RunContext(data_dir=work_dir / "data", checkpoint_dir=work_dir / model_type)
    final = train_job(spec, reporter, context)
    return {
        "model": model_type,
        "parameters": reporter.run_info["parameters"],
        "likelihood": reporter.run_info["likelihood"],
        "steps": final["step"],
        "steps_per_s": final["step"] / training_seconds(reporter.epochs, spec.train.batch_size),
        "final": final,
    }


def training_seconds(epochs: list[dict[str, Any]], batch_size: int) -> float:
    """Time spent in training steps: each epoch's images (full batches) over its images/s."""
    seconds, previous_step = 0.0, 0
    for epoch in epochs:
        seconds += (epoch["step"] - previous_step) * batch_size / epoch["images_per_s"]
        previous_step = epoch["step"]
    return seconds


def score_cells(final: dict[str, Any]) -> tuple[str, str]:
    """(val bits/dim, the model's own metric) as table cells."""
    bits = final.get("val_bits_per_dim")
    bits_cell = f"{bits:.3f}" if bits is not None else "-"
    own = [("val_fcd", "FCD"), ("val_mse", "MSE"), ("val_neg_elbo_bits_per_dim", "ELBO bits/dim")]
    cells = [f"{label} {final[key]:.4g}" for key, label in own if key in final]
    return bits_cell, ", ".join(cells) or "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | params | steps | steps/s | val bits/dim | other val metrics | likelihood |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        bits, other = score_cells(row["final"])
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | {row['steps']} | "
            f"{row['steps_per_s']:.1f} | {bits} | {other} | {row['likelihood']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training batches per model")
    parser.add_argument("--models", nargs="+", default=list(PARAMS_BY_MODEL))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="genfleet-bench-") as work:
        rows = [bench_model(name, args.steps, Path(work)) for name in args.models]
    print(
        f"digits (8x8, 17 levels), batch 64, {args.threads} CPU thread(s), torch {torch.__version__}"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
