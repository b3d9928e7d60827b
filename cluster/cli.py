"""The `genfleet` command line.

Exit codes: 0 success, 1 invalid input (a spec, a value), 2 usage or unknown job, 3 a service
(Redis, Ray) cannot be reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cluster import cli_evaluate, cli_jobs, cli_local, cli_stack, cli_storage
from cluster.cli_errors import friendly_errors
from jobs.settings import limits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genfleet",
        description="Train generative image models from a durable Redis queue on Ray.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (cli_jobs, cli_storage, cli_evaluate, cli_local, cli_stack):
        module.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with friendly_errors() as outcome:
        # Every command reads specs or serves those who submit them: a bad GENFLEET_MAX_* stops
        # it here, before it starts a dispatcher or a dashboard that would fail on each spec.
        limits()
        outcome.code = args.handler(args)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
