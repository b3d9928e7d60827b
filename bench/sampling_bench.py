"""Naive vs cached sampling time for every autoregressive model with a cached sampler, on CPU.

    .venv/bin/python bench/sampling_bench.py            # batch 16, median of 3
    .venv/bin/python bench/sampling_bench.py --quick    # batch 2, one run: a smoke test
    .venv/bin/python bench/sampling_bench.py --models pixelcnn_pp

The softmax models on 28x28x1 images (MNIST), PixelCNN++ on 32x32x3 (CIFAR-10, where issue 14
asks it for 50x), 256 levels, default params, random weights, 10 classes. Both samplers get the
same generator seed; the table says whether their images were identical. Prints a markdown
table; every figure comes from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from jobs.model_params import PARAMS_BY_MODEL
from trainers.cached_sampling import IncrementalModel, cached_sample
from trainers.generative_model import ImageShape
from trainers.models import build_model
from trainers.sampling import naive_sample

LEVELS = 256
MNIST = ImageShape(channels=1, height=28, width=28, levels=LEVELS)
CIFAR = ImageShape(channels=3, height=32, width=32, levels=LEVELS)
SHAPES = {
    "pixelcnn": MNIST,
    "gated_pixelcnn": MNIST,
    "pixelrnn_row": MNIST,
    "pixelrnn_diag": MNIST,
    "pixelcnn_pp": CIFAR,
}
NUM_CLASSES = 10
Sampler = Callable[[IncrementalModel, Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class Timing:
    model: str
    shape: ImageShape
    naive_seconds: float
    cached_seconds: float
    identical: bool


def median_seconds(
    sampler: Sampler, model: IncrementalModel, labels: Tensor, repeats: int
) -> tuple[float, Tensor]:
    """Median wall time of `repeats` runs from seed 0, and the images of the last run."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = sampler(model, labels, torch.Generator().manual_seed(0))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), images


def time_model(name: str, batch: int, repeats: int) -> Timing:
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = build_model(name, PARAMS_BY_MODEL[name](), shape, NUM_CLASSES)
    assert isinstance(model, IncrementalModel)
    labels = torch.arange(batch) % NUM_CLASSES
    naive_seconds, naive_images = median_seconds(naive_sample, model, labels, repeats)
    cached_seconds, cached_images = median_seconds(cached_sample, model, labels, repeats)
    identical = torch.equal(naive_images, cached_images)
    return Timing(name, shape, naive_seconds, cached_seconds, identical)


def markdown_table(timings: list[Timing], batch: int, repeats: int) -> str:
    lines = [
        f"{LEVELS} levels, batch {batch}, median of {repeats}, "
        f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}",
        "",
        "| model | image | naive (s) | cached (s) | speed-up | identical images |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for timing in timings:
        shape = timing.shape
        speedup = timing.naive_seconds / timing.cached_seconds
        lines.append(
            f"| {timing.model} | {shape.height}x{shape.width}x{shape.channels} "
            f"| {timing.naive_seconds:.2f} | {timing.cached_seconds:.3f} "
            f"| {speedup:.1f}x | {'yes' if timing.identical else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, one run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", choices=SHAPES, default=list(SHAPES))
    args = parser.parse_args(argv)
    batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats)
    torch.set_num_threads(args.threads)
    timings = [time_model(name, batch, repeats) for name in args.models]
    print(markdown_table(timings, batch, repeats))


if __name__ == "__main__":
    main()
