"""`genfleet run-local`: one train spec in this process, with no Redis and no Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.cli_errors import UserError
from genfleet.specs import as_spec
from jobs.settings import Settings

INTERRUPTED = 130  # a shell's status for a command stopped by Ctrl-C


def register(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "run-local", help="train one spec here (no Redis, no Ray); samples and checkpoints to DIR"
    )
    command.add_argument("spec", type=Path, metavar="SPEC.yaml")
    command.add_argument("--out", type=Path, metavar="DIR", help="default: runs/<spec name>")
    command.add_argument("--resume", type=Path, metavar="CHECKPOINT_DIR")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = as_spec(args.spec)
    if spec.kind != "train":
        raise UserError(
            f"{args.spec}: kind: run-local runs train specs, got {spec.kind!r}; "
            f"run sweeps on the cluster with `genfleet submit {args.spec}`"
        )
    # torch loads here, after the spec is checked: the queue commands and spec errors stay instant
    from trainers.checkpoint import CheckpointError
    from trainers.data import DatasetError
    from trainers.loop import TrainingCancelled
    from trainers.run_local import run_local

    out_dir = args.out or Path("runs") / spec.name
    settings = Settings.from_env()
    try:
        run_local(spec, out_dir, settings.data_dir, not args.no_progress, resume_from=args.resume)
    except (DatasetError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    except TrainingCancelled as exc:
        checkpoints = sorted((out_dir / "checkpoints").glob("epoch-*"))
        resume = f"resume with --resume {checkpoints[-1]}" if checkpoints else "no checkpoint yet"
        print(f"stopped: {exc}; what it wrote is in {out_dir}, {resume}")
        return INTERRUPTED
    print(f"done: metrics, samples and checkpoints in {out_dir}")
    return 0
