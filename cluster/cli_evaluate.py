"""`genfleet evaluate JOB|CHECKPOINT_DIR`: a checkpoint's exact likelihood over one split.

A job's checkpoint is its final one (a sweep's: its best trial's), found in the job's result;
a folder is a checkpoint or holds some (the newest is taken), with the spec saved inside it.
`--cluster` runs the evaluation as a Ray task, on a GPU when the job's spec (or `--spec`)
trains on one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.checkpoint_evaluation import Target, evaluate_target
from cluster.cli_errors import UserError, stderr
from cluster.cli_jobs import int_at_least, open_client, stdout
from genfleet.specs import as_spec
from jobs.settings import Settings
from jobs.spec import SPLITS, apply_overrides


def register(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "evaluate", help="exact likelihood of a job's or a folder's checkpoint over one split"
    )
    command.add_argument("target", metavar="JOB|CHECKPOINT_DIR")
    command.add_argument("--split", choices=SPLITS, default="test")
    command.add_argument(
        "--iw-samples", type=int_at_least(1), metavar="K", help="vae: importance samples"
    )
    command.add_argument(
        "--spec", type=Path, metavar="FILE", help="default: the spec saved in the checkpoint"
    )
    command.add_argument(
        "--cluster", action="store_true", help="run on the Ray cluster (GENFLEET_RAY_ADDRESS)"
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    target = resolve_target(args.target, args.spec)
    settings = Settings.from_env()
    with progress_bar(args.split, disabled=args.no_progress or args.json) as show:
        if args.cluster:
            from cluster.remote_evaluation import evaluate_on_cluster

            result = evaluate_on_cluster(target, args.split, args.iw_samples, settings, show)
        else:
            result = evaluate_target(target, settings.data_dir, args.split, args.iw_samples, show)
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)
    return 0


def resolve_target(text: str, spec_file: Path | None) -> Target:
    """A folder or storage URI when `text` names one (job ids hold no "/"), else a job id."""
    override = as_spec(spec_file) if spec_file is not None else None
    if "/" in text or Path(text).exists():
        return Target(override, text)
    job = open_client().job(text)
    record = job.record()
    spec, trial = record.job_spec(), None
    if record.kind == "sweep":
        best = job.best_trial()
        if best is None:
            raise UserError(
                f"{text}: the sweep has no best trial yet (status {record.status.value})"
            )
        spec, trial = apply_overrides(spec, best.config), best.trial_id
    # A finished run's result names its final checkpoint; otherwise the newest one in the run's
    # storage folder (a sweep trial's, a failed or a running job's) is evaluated.
    folders = [entry.uri for entry in job.checkpoints(trial)]
    checkpoint = record.result.get("checkpoint") or (folders[-1] if folders else None)
    if checkpoint is None:
        whose = f"its best trial {trial} has" if trial else "it has"
        raise UserError(f"{text}: {whose} saved no checkpoint (status {record.status.value})")
    return Target(override or spec, checkpoint)


@contextmanager
def progress_bar(split: str, disabled: bool) -> Iterator[Callable[[int, int], None]]:
    bar = Progress(
        TextColumn(f"evaluating {split}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        disable=disabled,
    )
    task = bar.add_task(split, total=None)

    def show(batch: int, batches: int) -> None:
        bar.update(task, completed=batch, total=batches)

    with bar:
        yield show


def print_result(result: dict[str, Any]) -> None:
    split = result["split"]
    stdout.print(
        f"{split}: {result['images']} images, checkpoint of epoch {result['epoch']} "
        f"({result['checkpoint']}); likelihood {result['likelihood']}"
    )
    for key, value in result.items():
        if key.startswith(f"{split}_") and isinstance(value, float):
            stdout.print(f"  {key:<28} {value:.6f}")
