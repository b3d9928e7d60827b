"""`genfleet` commands that free Redis and storage: delete, gc, and migrate for older stores."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from cluster.cli_errors import EXIT_INVALID, UsageError, UserError, stderr
from cluster.cli_jobs import open_client, stdout
from jobs.deletion import (
    Deleted,
    NotDeletable,
    check_deletable,
    final_statuses,
    parse_age,
    storage_of,
)
from jobs.migration import migrate_images

if TYPE_CHECKING:
    from genfleet.client import Client


def register(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "delete",
        help="remove finished jobs (a sweep with its trials) and all they left: records, "
        "logs, metrics, images, checkpoints, Ray results",
    )
    command.add_argument("job_ids", nargs="+", metavar="JOB")
    command.add_argument("--yes", action="store_true", help="delete without asking")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=delete)

    command = subcommands.add_parser("gc", help="delete the jobs that finished long enough ago")
    command.add_argument(
        "--finished-before", required=True, metavar="AGE", help="an age: 30d, 12h, 90m, 45s, 2w"
    )
    command.add_argument(
        "--status",
        metavar="STATUS,...",
        help="only jobs that ended so (default: succeeded, failed, cancelled, dead)",
    )
    command.add_argument("--dry-run", action="store_true", help="list the jobs, delete nothing")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=gc)

    command = subcommands.add_parser(
        "migrate", help="move images that older versions kept in Redis into the runs' storage"
    )
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=migrate)


def delete(args: argparse.Namespace) -> int:
    client, job_ids = open_client(), list(dict.fromkeys(args.job_ids))
    try:
        check_deletable(client.store, job_ids)
        if not args.yes and not _confirmed(client, job_ids):
            stderr.print("nothing deleted")
            return EXIT_INVALID
        deleted = client.delete(*job_ids)
    except NotDeletable as exc:
        if exc.deleted:  # a job of the batch was retried after the check; the rest went
            _report(exc.deleted, args.json)
        raise UserError(str(exc)) from exc
    _report(deleted, args.json)
    return 0


def _report(deleted: Sequence[Deleted], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"deleted": [asdict(entry) for entry in deleted]}))
        return
    for entry in deleted:
        stdout.print(
            f"deleted {entry.job_id}: {len(entry.trials)} trial(s), {len(entry.folders)} folder(s)"
        )


def _confirmed(client: Client, job_ids: list[str]) -> bool:
    """Lists what goes and asks on the terminal; without one to ask on, refuses."""
    if not sys.stdin.isatty():
        raise UsageError(
            "delete asks before it removes anything and stdin is not a terminal: pass --yes"
        )
    store = client.store
    stderr.print("these jobs and all they left will be deleted:")
    for record in store.get_many(job_ids):
        trials = len(store.trial_ids(record.id))
        stderr.print(f"  {record.id}  {record.name}  {record.status}  {record.kind}", end="")
        stderr.print(f", {trials} trial(s)" if trials else "")
    folders = sum(map(len, storage_of(store).folders_of(set(job_ids)).values()))
    stderr.print(f"  and {folders} folder(s) under {client.settings.storage}")
    stderr.print(f"delete {len(job_ids)} job(s)? [y/N] ", end="")
    return input().strip().lower() in ("y", "yes")


def gc(args: argparse.Namespace) -> int:
    try:
        age = parse_age(args.finished_before, "--finished-before")
        statuses = (
            None if args.status is None else final_statuses(args.status.split(","), "--status")
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    job_ids = open_client().collect_garbage(age, statuses, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "job_ids": job_ids}))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    stdout.print(f"{verb} {len(job_ids)} job(s) finished more than {args.finished_before} ago")
    for job_id in job_ids:
        stdout.print(f"  {job_id}")
    return 0


def migrate(args: argparse.Namespace) -> int:
    client = open_client()
    report = migrate_images(client.store)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        stdout.print(
            f"moved {report.moved} image(s) of {report.jobs} job(s) from Redis into "
            f"{client.settings.storage}"
        )
        if report.trials_indexed:
            stdout.print(
                f"indexed the artifacts of {report.trials_indexed} sweep trial(s) that older "
                "versions left unindexed, so that delete and gc remove them with their sweep"
            )
        if report.keys_removed:
            stdout.print(f"removed {report.keys_removed} trial key(s) of jobs no longer there")
    return 0
