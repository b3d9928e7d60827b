"""The data path's share of a training step on CPU: per-item DataLoader against indexed batches.

    .venv/bin/python bench/data_path_bench.py            # the table genfleet issue 14 asks for
    .venv/bin/python bench/data_path_bench.py --quick    # a smoke test, not a measurement

One training run of the loop (trainers/loop.py) per dataset shape: `digits` (8x8, 17 levels,
the real images) and MNIST's shape (28x28x1, 256 levels, random images written as MNIST's raw
files, since nothing can be downloaded here). Each round trains STEPS batches from the old
data path (the DistributedSampler + DataLoader the loop used before trainers/batches.py:
per-item `__getitem__` and default collation), then STEPS from the new one (the loop's
TrainBatches: one index tensor per epoch, one gather per step), alternating which goes first,
on the same model and optimizer. The data path is everything from asking for a batch to
holding it, the epoch's shuffle included (a real epoch spreads that over hundreds of steps, a
round over STEPS: the new path's share is overstated, not understated); the step is
`TrainingRun.train_step`. Both are timed in this thread's CPU time, which other processes on a
shared machine do not inflate (one torch thread: all the work is on this one). Shares are
data / (data + step) per round; the table shows medians over rounds. Goal (issue 14, item 5):
the loop's data path at most 5% of a step.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from models_bench import BenchReporter  # a sibling script: bench/ is on sys.path
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from jobs.spec import JobSpec
from trainers.loop import RunContext, TrainingRun
from trainers.metrics import MetricSums

GOAL_SHARE = 0.05
ROUNDS, QUICK_ROUNDS = 5, 2
STEPS, QUICK_STEPS = 10, 3  # MNIST-shaped pixelcnn steps take about 1 s on one thread
MNIST_TRAIN_IMAGES, QUICK_MNIST_TRAIN_IMAGES = 60_000, 1_000  # the real file holds 60,000
MNIST_TEST_IMAGES = 1_000  # read at setup, never trained on
SHAPES = {"digits": "digits 8x8x1, 17 levels", "mnist": "MNIST 28x28x1, 256 levels"}


@dataclass(frozen=True)
class Round:
    data_seconds: float
    step_seconds: float

    @property
    def share(self) -> float:
        return self.data_seconds / (self.data_seconds + self.step_seconds)


def write_random_mnist(raw: Path, train_images: int, seed: int) -> None:
    """MNIST's four raw idx files (torchvision reads them) holding uniform random pixels."""
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_images), ("t10k", MNIST_TEST_IMAGES)):
        pixels = torch.randint(256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        images_header = struct.pack(">iiii", 0x803, count, 28, 28)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images_header + pixels.numpy().tobytes())
        labels_header = struct.pack(">ii", 0x801, count)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(labels_header + labels.numpy().tobytes())


def bench_spec(dataset: str, model_type: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": f"data-path-bench-{dataset}",
            "model": {"type": model_type},
            "data": {"dataset": dataset},
            "train": {"epochs": 1},
        }
    )


def old_data_path(run: TrainingRun, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The loop's batches before trainers/batches.py, the same items in the same order."""
    batch_size = run.train_spec.batch_size
    sampler = DistributedSampler(
        run.data.train, num_replicas=1, rank=0, shuffle=True, seed=run.train_spec.seed
    )
    sampler.set_epoch(epoch)
    drop_last = len(sampler) > batch_size
    return iter(DataLoader(run.data.train, batch_size, sampler=sampler, drop_last=drop_last))


def timed_round(run: TrainingRun, epoch: int, batches: Callable[[], Iterable], steps: int) -> Round:
    """`steps` training steps from `batches()`, timing the data path and the step apart."""
    sums = MetricSums(run.device)
    data_seconds = step_seconds = 0.0
    started = time.thread_time()
    iterator = iter(batches())  # the epoch's shuffle counts as data time
    for _ in range(steps):
        images, labels = next(iterator)
        images, labels = images.to(run.device), labels.to(run.device)
        fetched = time.thread_time()
        data_seconds += fetched - started
        run.train_step(epoch, images, labels, sums)
        started = time.thread_time()
        step_seconds += started - fetched
    return Round(data_seconds, step_seconds)


def bench_shape(
    dataset: str, model_type: str, rounds: int, steps: int, work_dir: Path, mnist_images: int
) -> dict[str, Any]:
    data_dir = work_dir / "data"
    if dataset == "mnist":
        write_random_mnist(data_dir / "mnist" / "MNIST" / "raw", mnist_images, seed=0)
    context = RunContext(data_dir=data_dir, checkpoint_dir=work_dir / dataset)
    run = TrainingRun(bench_spec(dataset, model_type), BenchReporter(), context)
    run.setup()
    run.trained_module.train()
    old: list[Round] = []
    new: list[Round] = []
    for epoch in range(1, rounds + 1):
        paths = [
            (old, partial(old_data_path, run, epoch)),
            (new, partial(run.train_batches.epoch, epoch)),
        ]
        for results, batches in paths if epoch % 2 else reversed(paths):
            results.append(timed_round(run, epoch, batches, steps))
    run.cleanup()
    return {
        "shape": SHAPES[dataset],
        "model": model_type,
        "batch": run.train_spec.batch_size,
        "steps": rounds * steps,
        "old": old,
        "new": new,
    }


def median_ms(rounds: list[Round], steps: int, seconds_of: str) -> float:
    return statistics.median(getattr(one, seconds_of) for one in rounds) / steps * 1000


def markdown_table(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        "| data | model | batch | steps per path | old data ms/step | new data ms/step "
        "| train step ms | old share | new share | new / old data time | goal (new <= 5%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        old_data = median_ms(row["old"], steps, "data_seconds")
        new_data = median_ms(row["new"], steps, "data_seconds")
        step = median_ms(row["old"] + row["new"], steps, "step_seconds")
        old_share = statistics.median(one.share for one in row["old"])
        new_share = statistics.median(one.share for one in row["new"])
        goal = "yes" if new_share <= GOAL_SHARE else "NO"
        lines.append(
            f"| {row['shape']} | {row['model']} | {row['batch']} | {row['steps']} | "
            f"{old_data:.3f} | {new_data:.3f} | {step:.2f} | {old_share:.2%} | "
            f"{new_share:.2%} | {new_data / old_data:.3f} | {goal} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, 1,000 MNIST")
    parser.add_argument("--model", default="pixelcnn", help="model.type, with its defaults")
    args = parser.parse_args()
    torch.set_num_threads(1)  # thread CPU time must see every step's work
    rounds, steps = (QUICK_ROUNDS, QUICK_STEPS) if args.quick else (ROUNDS, STEPS)
    mnist_images = QUICK_MNIST_TRAIN_IMAGES if args.quick else MNIST_TRAIN_IMAGES
    with tempfile.TemporaryDirectory(prefix="genfleet-data-path-bench-") as work:
        rows = [
            bench_shape(dataset, args.model, rounds, steps, Path(work), mnist_images)
            for dataset in SHAPES
        ]
    print(
        f"data path share of a training step (medians of {rounds} rounds of {steps} steps per "
        f"path), 1 CPU thread, timed in its CPU time, torch {torch.__version__}"
        + (" (--quick: a smoke test, not a measurement)" if args.quick else "")
    )
    print(markdown_table(rows, steps))


if __name__ == "__main__":
    main()
