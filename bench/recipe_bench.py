"""Each likelihood model's default recipe (jobs/recipes.py) against plain Adam, at equal steps.

    nice -n 10 .venv/bin/python bench/recipe_bench.py      # the table jobs/recipes.py quotes
    .venv/bin/python bench/recipe_bench.py --quick          # a smoke test, not a measurement

Every model trains on `digits` at its default width, twice per step budget from the same seed
and batch size: once with its default recipe, once with plain Adam at a constant 1e-3 (no
warm-up, no EMA: the recipe of the common reference implementations). Prints val and test NLL
in bits/dim (the VAE's is its IWAE bound) and default / plain ratios; the goal (genfleet issue
13) is a ratio <= 0.98 on both splits for every model and budget.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from models_bench import BenchReporter  # a sibling script: bench/ is on sys.path

from jobs.recipes import RECIPES
from jobs.spec import JobSpec
from trainers.loop import RunContext, train_job

MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "vae")
BUDGETS = (100, 300)  # the whole bench: about 5 minutes on one CPU thread
QUICK_BUDGETS = (10,)
# --quick only: the VAE's last-epoch IWAE bound with k=1000 would take most of its time.
QUICK_PARAMS = {"vae": {"iw_samples_final": 64}}
STEPS_PER_EPOCH = 20  # digits has 22 full train batches of 64; budgets are multiples of 20
# Every key a recipe may set, at the reference implementations' values.
PLAIN = {"optimizer": "adam", "lr": 0.001, "lr_schedule": "constant", "warmup_steps": 0}
PLAIN |= {"ema_decay": 0.0, "weight_decay": 0.0, "grad_clip": None}
GOAL_RATIO = 0.98
SPLITS = ("val", "test")


def bench_spec(
    model_type: str, steps: int, recipe: dict[str, Any], params: dict[str, Any] | None = None
) -> JobSpec:
    """`steps` batches in whole epochs, evaluated (and sampled, checkpointed) once at the end;
    `recipe` overrides the model's default recipe ({} keeps it), `params` its default params."""
    epochs = math.ceil(steps / STEPS_PER_EPOCH)
    schedule = {"eval_every": epochs, "sample_every": epochs, "checkpoint_every": epochs}
    train = {"epochs": epochs, "max_steps_per_epoch": math.ceil(steps / epochs), **schedule}
    return JobSpec.model_validate(
        {
            "name": f"recipe-bench-{model_type}",
            "model": {"type": model_type, "params": params or {}},
            "data": {"dataset": "digits"},
            "train": {**train, "num_samples": 8, **recipe},
        }
    )


def final_bits_per_dim(spec: JobSpec, work_dir: Path) -> dict[str, float | None]:
    # One folder per model: the VAE's runs share the FCD classifier cached there.
    context = RunContext(data_dir=work_dir / "data", checkpoint_dir=work_dir / spec.model_type)
    final = train_job(spec, BenchReporter(), context)
    planned = spec.train.epochs * (spec.train.max_steps_per_epoch or 0)
    if final["step"] != planned:  # fewer train batches than planned: not equal steps any more
        raise RuntimeError(f"{spec.model_type}: trained {final['step']} steps, not {planned}")
    return {split: final.get(f"{split}_bits_per_dim") for split in SPLITS}


def bench_model(
    model_type: str, steps: int, work_dir: Path, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    unknown = set(RECIPES.get(model_type, {})) - set(PLAIN)
    if unknown:
        raise ValueError(f"PLAIN must set every key recipes set; missing {sorted(unknown)}")
    default = final_bits_per_dim(bench_spec(model_type, steps, {}, params), work_dir)
    plain = final_bits_per_dim(bench_spec(model_type, steps, PLAIN, params), work_dir)
    return {"model": model_type, "steps": steps, "default": default, "plain": plain}


def ratio(default: float | None, plain: float | None) -> float | None:
    return default / plain if default is not None and plain is not None else None


def cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | steps | val default | val plain | ratio | test default | test plain | ratio "
        "| goal (<= 0.98) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        cells, ratios = [], []
        for split in SPLITS:
            default, plain = row["default"][split], row["plain"][split]
            ratios.append(ratio(default, plain))
            cells += [cell(default, 4), cell(plain, 4), cell(ratios[-1], 3)]
        known = [value for value in ratios if value is not None]
        goal = "yes" if all(value <= GOAL_RATIO for value in known) else "NO"
        goal += "" if len(known) == len(ratios) else " (val only)"
        lines.append(f"| {row['model']} | {row['steps']} | " + " | ".join(cells) + f" | {goal} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every model for 10 steps")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    params = QUICK_PARAMS if args.quick else {}
    with tempfile.TemporaryDirectory(prefix="genfleet-recipe-bench-") as work:
        rows = [
            bench_model(model, steps, Path(work), params.get(model))
            for model in args.models
            for steps in budgets
        ]
    print(
        f"digits (8x8, 17 levels), batch 64, bits/dim at equal steps (default recipe / plain "
        f"Adam 1e-3), {args.threads} CPU thread(s), torch {torch.__version__}"
        + (" (--quick: a smoke test, not a measurement)" if args.quick else "")
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
