"""PixelCNN++ and Gated PixelCNN training on CIFAR-shaped data: fp32 eager against bf16 autocast,
channels_last and torch.compile, with images/s, ratios, peak memory and MFU.

    python bench/gpu_bench.py            # on a CUDA machine: the table genfleet issue 14 asks for
    python bench/gpu_bench.py --smoke    # CPU, tiny models, seconds: a smoke test, not a measurement

Runs on whatever torch it finds with trainers/ alone: the GPU machine sometimes lent has torch
but no pydantic, Ray or Redis. So models are built from plain namespaces holding every field of
their params (jobs/model_params.py; tests/test_gpu_bench.py checks they validate there), and
batches come from the loop's own TrainBatches over 50,000 random 3x32x32 images of 256 levels,
held on the device. Each variant trains a fresh model from the same seed with Adam:
`--warmup` steps (compilation happens there), then `--steps` timed ones. FLOPs per step are
counted once per model by torch's FlopCounterMode over one fp32 forward and backward; MFU is
achieved FLOP/s over the device's dense peak for the variant's precision (PEAK_FLOPS).
Without a CUDA device the default run falls back to the smoke sizes on the CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from trainers.batches import TrainBatches
from trainers.generative_model import GenerativeModel, ImageShape
from trainers.models import model_class
from trainers.splits import LevelImages

CIFAR = ImageShape(channels=3, height=32, width=32, levels=256)
CIFAR_TRAIN_IMAGES = 50_000
CIFAR_CLASSES = 10
SEED = 0
# Paper-sized models: PixelCNN++ as Salimans et al. train CIFAR-10 (section 3: 5 blocks per
# resolution, 160 filters, 10 logistics, dropout 0.5); Gated PixelCNN at 15 layers of 3 x 128
# features, class-conditional.
FULL_PARAMS: dict[str, dict[str, Any]] = {
    "pixelcnn_pp": {
        "nr_resnet": 5,
        "nr_filters": 160,
        "nr_logistic_mix": 10,
        "dropout": 0.5,
        "weight_norm": False,
        "conditional": False,
    },
    "gated_pixelcnn": {
        "layers": 15,
        "channels": 128,
        "kernel": 3,
        "conditional": True,
        "output_hidden": 512,
    },
}
SMOKE_PARAMS: dict[str, dict[str, Any]] = {
    "pixelcnn_pp": {
        "nr_resnet": 1,
        "nr_filters": 8,
        "nr_logistic_mix": 2,
        "dropout": 0.5,
        "weight_norm": False,
        "conditional": False,
    },
    "gated_pixelcnn": {
        "layers": 2,
        "channels": 4,
        "kernel": 3,
        "conditional": True,
        "output_hidden": 8,
    },
}
SMOKE_IMAGES, SMOKE_BATCH, SMOKE_WARMUP, SMOKE_STEPS = 16, 4, 1, 2
# Dense (no sparsity) peak FLOP/s, NVIDIA's H200 datasheet, keyed by torch.cuda.get_device_name.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H200": {"bf16": 989.5e12, "tf32": 494.5e12, "fp32": 67e12},
    "NVIDIA H200 NVL": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
}


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool
    channels_last: bool
    compiled: bool


VARIANTS = (
    Variant("fp32 eager", bf16=False, channels_last=False, compiled=False),
    Variant("bf16 autocast", bf16=True, channels_last=False, compiled=False),
    Variant("bf16 + channels_last", bf16=True, channels_last=True, compiled=False),
    Variant("bf16 + channels_last + compile", bf16=True, channels_last=True, compiled=True),
)


@dataclass(frozen=True)
class Sizes:
    params: dict[str, dict[str, Any]]
    images: int
    batch_size: int
    warmup: int
    steps: int
    compile_backend: str  # "eager" in the smoke: dynamo traces, nothing is code-generated


@dataclass(frozen=True)
class Measurement:
    model: str
    variant: Variant
    images_per_s: float
    peak_memory_bytes: int | None  # None off CUDA
    flops_per_step: float


def build(model_type: str, sizes: Sizes, device: torch.device) -> GenerativeModel:
    """A fresh model from SEED. Its params are a namespace, not jobs/model_params.py's pydantic
    class: the models only read the fields."""
    torch.manual_seed(SEED)
    params = SimpleNamespace(**sizes.params[model_type])
    return model_class(model_type)(params, CIFAR, CIFAR_CLASSES).to(device)


def synthetic_cifar(images: int, device: torch.device) -> LevelImages:
    generator = torch.Generator().manual_seed(SEED)
    shape = (images, CIFAR.channels, CIFAR.height, CIFAR.width)
    pixels = torch.randint(CIFAR.levels, shape, generator=generator, dtype=torch.uint8)
    labels = torch.randint(CIFAR_CLASSES, (images,), generator=generator)
    return LevelImages(pixels, labels).to(device)


def endless(batches: TrainBatches) -> Iterator[tuple[Tensor, Tensor]]:
    """The loop's training batches, epoch after epoch."""
    epoch = 1
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def train_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, Tensor], bf16: bool
) -> None:
    """The loop's step (trainers/loop.py train_phase) without its DDP and cancel checks."""
    images, labels = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = module(images, labels)["loss"].float().mean()
    loss.backward()
    optimizer.step()


def step_flops(model_type: str, sizes: Sizes, batch: tuple[Tensor, Tensor]) -> float:
    """FLOPs of one training forward and backward (the optimizer's elementwise update aside)."""
    model = build(model_type, sizes, batch[0].device)
    with FlopCounterMode(display=False) as counter:
        model(*batch)["loss"].float().mean().backward()
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model_type: str,
    variant: Variant,
    sizes: Sizes,
    batches: Iterator[tuple[Tensor, Tensor]],
    flops_per_step: float,
    device: torch.device,
) -> Measurement:
    model = build(model_type, sizes, device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = torch.compile(model, backend=sizes.compile_backend) if variant.compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def next_batch() -> tuple[Tensor, Tensor]:
        images, labels = next(batches)
        if variant.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(sizes.warmup):
        train_step(module, optimizer, next_batch(), variant.bf16)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(sizes.steps):
        train_step(module, optimizer, next_batch(), variant.bf16)
    synchronize(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    images_per_s = sizes.steps * sizes.batch_size / elapsed
    return Measurement(model_type, variant, images_per_s, peak, flops_per_step)


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """The device's dense peak for the variant, None when PEAK_FLOPS does not know it. fp32
    variants count against TF32 while cuDNN may use it (torch's default): convolutions, nearly
    every FLOP here, then run on TF32 tensor cores."""
    if device.type != "cuda":
        return None
    peaks = PEAK_FLOPS.get(torch.cuda.get_device_name(device))
    if peaks is None:
        return None
    if bf16:
        return peaks["bf16"]
    return peaks["tf32"] if torch.backends.cudnn.allow_tf32 else peaks["fp32"]


def bench(models: list[str], sizes: Sizes, device: torch.device) -> list[Measurement]:
    split = synthetic_cifar(sizes.images, device)
    batches = endless(TrainBatches(split, sizes.batch_size, SEED, device))
    measurements = []
    for model_type in models:
        flops = step_flops(model_type, sizes, next(batches))
        for variant in VARIANTS:
            measurements.append(measure(model_type, variant, sizes, batches, flops, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return measurements


def markdown_table(measurements: list[Measurement], batch_size: int, device: torch.device) -> str:
    lines = [
        "| model | variant | images/s | vs fp32 eager | peak memory GiB | GFLOP/image "
        "| TFLOP/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = {m.model: m.images_per_s for m in measurements if m.variant == VARIANTS[0]}
    for m in measurements:
        flop_per_s = m.flops_per_step * m.images_per_s / batch_size
        peak = peak_flops(device, m.variant.bf16)
        mfu = f"{flop_per_s / peak:.1%}" if peak is not None else "unknown peak"
        memory = "n/a" if m.peak_memory_bytes is None else f"{m.peak_memory_bytes / 2**30:.2f}"
        lines.append(
            f"| {m.model} | {m.variant.name} | {m.images_per_s:.1f} | "
            f"{m.images_per_s / baseline[m.model]:.2f} | {memory} | "
            f"{m.flops_per_step / batch_size / 1e9:.3f} | {flop_per_s / 1e12:.3f} | {mfu} |"
        )
    return "\n".join(lines)


def device_line(device: torch.device, sizes: Sizes, smoke: bool) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = "" if name in PEAK_FLOPS else " (unknown peak: no MFU)"
        where = f"{name}{known}, TF32 convolutions {torch.backends.cudnn.allow_tf32}"
    else:
        where = f"CPU, {torch.get_num_threads()} thread(s) (no peak: no MFU)"
    note = " (--smoke: a smoke test, not a measurement)" if smoke else ""
    return (
        f"CIFAR-shaped 3x32x32, 256 levels, batch {sizes.batch_size}, {sizes.warmup} warm-up + "
        f"{sizes.steps} timed steps, {where}, torch {torch.__version__}{note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models and batches")
    parser.add_argument("--models", nargs="+", default=list(FULL_PARAMS), choices=FULL_PARAMS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compiles)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        sizes = Sizes(SMOKE_PARAMS, SMOKE_IMAGES, SMOKE_BATCH, SMOKE_WARMUP, SMOKE_STEPS, "eager")
    else:
        device = torch.device("cuda")
        sizes = Sizes(
            FULL_PARAMS, CIFAR_TRAIN_IMAGES, args.batch_size, args.warmup, args.steps, "inductor"
        )
    if not args.smoke and smoke:
        print("no CUDA device: the CPU smoke sizes instead")
    print(device_line(device, sizes, smoke))
    print(markdown_table(bench(args.models, sizes, device), sizes.batch_size, device))


if __name__ == "__main__":
    main()
