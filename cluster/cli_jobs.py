"""`genfleet` commands that read and change jobs in the queue: no Ray needed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rich.console import Console
from rich.measure import Measurement
from rich.progress_bar import ProgressBar
from rich.table import Table

from cluster.cli_errors import EXIT_INVALID, stderr
from genfleet.errors import SpecFileError
from genfleet.specs import as_spec
from jobs.keys import MAX_INTERRUPTIONS
from jobs.records import JobRecord, JobStatus
from jobs.run_storage import ImageUnreadable
from jobs.scheduling import WaitingJob, sent_demand
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.spec_errors import SpecError
from jobs.store import RedisMemory, redis_full_text

if TYPE_CHECKING:
    from genfleet.client import Client

stdout = Console(highlight=False, soft_wrap=True, markup=False)  # job text is never markup

JOB_ID_CHARS = 12  # jobs.queue makes ids of 6 random bytes in hex
UNBOUNDED_COLUMNS = 10_000
FOLLOW_POLL_SECONDS = 1.0


def register(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser("validate", help="check spec files; print every error")
    command.add_argument("files", nargs="+", type=Path, metavar="FILE")
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.set_defaults(handler=validate)

    command = subcommands.add_parser("schema", help="print the spec's JSON Schema")
    command.set_defaults(handler=schema)

    command = subcommands.add_parser("submit", help="queue a spec; prints the job id")
    command.add_argument("file", type=Path, metavar="FILE")
    command.add_argument("--priority", type=int, choices=range(10), metavar="0-9")
    command.add_argument("--idempotency-key", help="resubmitting with it returns the same job")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=submit)

    command = subcommands.add_parser("list", help="list jobs, newest first")
    command.add_argument("--status", choices=[status.value for status in JobStatus])
    command.add_argument("--model")
    command.add_argument("--kind", choices=["train", "sweep"])
    command.add_argument("--limit", type=int_at_least(1), default=50)
    command.add_argument("--offset", type=int_at_least(0), default=0)
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=list_jobs)

    command = subcommands.add_parser(
        "status",
        help="a job's record, progress and events; without JOB, the jobs waiting and why, and "
        "what was asked of Ray's autoscaler",
    )
    command.add_argument("job_id", metavar="JOB", nargs="?")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=status)

    for name, handler, text in (
        ("cancel", cancel, "cancel a queued job now, or ask a running one to stop"),
        ("retry", retry, "put a failed, dead or cancelled job back in the queue"),
    ):
        command = subcommands.add_parser(name, help=text)
        command.add_argument("job_id", metavar="JOB")
        command.add_argument("--json", action="store_true")
        command.set_defaults(handler=handler)

    command = subcommands.add_parser("priority", help="change a queued job's priority")
    command.add_argument("job_id", metavar="JOB")
    command.add_argument("priority", type=int, choices=range(10), metavar="0-9")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=set_priority)

    command = subcommands.add_parser("logs", help="a job's log lines")
    command.add_argument("job_id", metavar="JOB")
    command.add_argument(
        "--tail", type=int_at_least(0), default=200, help="earlier lines to print first"
    )
    command.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    command.set_defaults(handler=logs)

    command = subcommands.add_parser("samples", help="write a job's sample grids as PNG files")
    command.add_argument("job_id", metavar="JOB")
    command.add_argument("--out", type=Path, required=True, metavar="DIR")
    command.set_defaults(handler=samples)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type; Redis ranges read 0 and negative counts as "to the end", so refuse them."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def open_client() -> Client:
    """The Python client on the configured Redis (starting the embedded one if needed): every
    command goes through it, as a notebook does."""
    from genfleet.client import Client

    return Client(Settings.from_env())


def validate(args: argparse.Namespace) -> int:
    problems: list[dict[str, Any]] = []
    for path in args.files:
        try:
            as_spec(path)
        except SpecError as exc:
            problems.extend(exc.as_json())
            if not args.json:
                stderr.print(str(exc))
        except SpecFileError as exc:
            problems.append({"source": str(path), "field": "", "line": None, "message": str(exc)})
            if not args.json:
                stderr.print(str(exc))
    if args.json:
        print(json.dumps({"valid": not problems, "errors": problems}, indent=2))
    elif not problems:
        stdout.print(f"{len(args.files)} spec(s) valid")
    return EXIT_INVALID if problems else 0


def schema(args: argparse.Namespace) -> int:
    del args
    print(json.dumps(JobSpec.model_json_schema(), indent=2))
    return 0


def submit(args: argparse.Namespace) -> int:
    spec = as_spec(args.file)
    job = open_client().submit(spec, priority=args.priority, idempotency_key=args.idempotency_key)
    job_id = job.id
    if args.json:
        print(json.dumps({"job_id": job_id}))
    else:
        print(job_id)
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    page = open_client().jobs(
        status=args.status, model=args.model, kind=args.kind, offset=args.offset, limit=args.limit
    )
    if args.json:
        print(json.dumps({"total": page.total, "jobs": [_summary(r) for r in page.records]}))
        return 0
    table = _job_table()
    for record in page.records:
        row = _summary(record)
        table.add_row(
            row["id"], row["name"], row["model"], row["kind"], row["status"],
            str(row["priority"]), str(row["attempts"]), row["progress"], row["val_bits_per_dim"],
        )  # fmt: skip
    _console_fitting(table).print(table)
    stdout.print(f"{len(page.records)} of {page.total} job(s)")
    return 0


def _job_table() -> Table:
    """Ids and statuses are never cut: users copy ids into other commands and scripts grep."""
    table = Table()
    table.add_column("id", no_wrap=True, min_width=JOB_ID_CHARS)
    table.add_column("name")
    table.add_column("model")
    table.add_column("kind")
    table.add_column("status", no_wrap=True, min_width=max(map(len, JobStatus)))
    for header in ("prio", "tries", "progress", "val bpd"):
        table.add_column(header)
    return table


def _console_fitting(table: Table) -> Console:
    """A terminal keeps its width; a pipe or file gets whole rows, not rich's default 80 columns."""
    if stdout.is_terminal:
        return stdout
    natural = Measurement.get(stdout, stdout.options.update_width(UNBOUNDED_COLUMNS), table)
    return Console(highlight=False, soft_wrap=True, markup=False, width=natural.maximum)


def _summary(record: JobRecord) -> dict[str, Any]:
    progress = record.progress or {}
    epoch, epochs = progress.get("epoch"), _epochs(record)
    bpd = progress.get("val_bits_per_dim")
    return {
        "id": record.id,
        "name": record.name,
        "model": record.model_type,
        "kind": record.kind,
        "status": str(record.status.value),
        "priority": record.priority,
        "attempts": record.attempts,
        "progress": f"{epoch}/{epochs}" if epoch is not None else "",
        "val_bits_per_dim": f"{bpd:.3f}" if isinstance(bpd, int | float) else "",
    }


def _epochs(record: JobRecord) -> int | None:
    """The run reports the epoch it reached; how many it will run is in the spec."""
    return record.spec.get("train", {}).get("epochs")


def status(args: argparse.Namespace) -> int:
    client = open_client()
    if args.job_id is None:
        return _queue_status(args, client.store.cluster_status(), _memory(client))
    job = client.job(args.job_id)
    record, events = job.record(), job.events()
    if args.json:
        body = {**asdict(record), "events": [asdict(event) for event in events]}
        print(json.dumps(body, default=str))
        return 0
    stdout.print(record.id, style="bold", end="")
    stdout.print(f"  {record.name}  ({record.kind}, {record.model_type})")
    stdout.print(
        f"status: {record.status.value}   attempts: {record.attempts}/{record.max_attempts}"
        f"   interruptions: {record.interruptions}/{MAX_INTERRUPTIONS}"
    )
    if record.pending_reason and record.status == JobStatus.QUEUED:
        stdout.print(f"why waiting: {record.pending_reason}")
        demand = sent_demand(client.store.cluster_status())
        if demand is not None and record.id in demand.job_ids:
            stdout.print(f"asked of Ray's autoscaler: {demand.describe()}")
    progress, epochs = record.progress or {}, _epochs(record)
    if epochs and "epoch" in progress:
        bar = ProgressBar(total=epochs, completed=progress["epoch"], width=30)
        stdout.print(bar, f" epoch {progress['epoch']}/{epochs}", end="")
        stdout.print(_numbers(progress, ("val_bits_per_dim", "test_bits_per_dim")))
    if record.kind == "sweep" and record.result.get("best_trial"):
        result = record.result
        numbers = {result["metric"]: result.get("best_metric")}
        if result.get("test_metric"):
            numbers[result["test_metric"]] = result.get("best_test_metric")
        stdout.print(f"best trial {result['best_trial']}:" + _numbers(numbers, tuple(numbers)))
    if record.last_error:
        stdout.print("last error:", style="red", end=" ")
        stdout.print(record.last_error)
    for event in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.ts))
        stdout.print(f"  {stamp}  {event.status:<10} {event.message}")
    return 0


def _queue_status(
    args: argparse.Namespace, cluster: dict[str, Any] | None, memory: RedisMemory | None
) -> int:
    """What the live dispatchers last said about the queue, and how full Redis is."""
    if args.json:
        print(json.dumps({**(cluster or {}), "redis_memory": memory and asdict(memory)}))
        return 0
    full_since = (cluster or {}).get("redis_full_since")
    if full_since is not None or (memory is not None and memory.full):
        stdout.print(redis_full_text(full_since))
    _dispatchers_status(cluster)
    if memory is not None:
        stdout.print(f"redis memory: {memory.describe()}")
    return 0


def _dispatchers_status(cluster: dict[str, Any] | None) -> None:
    """What the live dispatchers last said: who waits, why, and the demand sent."""
    if cluster is None:
        stdout.print("no dispatcher has reported; start one with `genfleet dispatcher`")
        return
    bound = cluster.get("max_cluster") or "unbounded"
    stdout.print(
        f"dispatchers: {len(cluster['dispatchers'])}   largest cluster "
        f"(GENFLEET_MAX_CLUSTER): {bound}"
    )
    waiting = [WaitingJob.from_json(job) for job in cluster.get("waiting", [])]
    stdout.print(f"waiting: {len(waiting)} job(s) at the head of the queue")
    for job in waiting:
        stdout.print(f"  {job.job_id}  {job.reason}")
    demand = sent_demand(cluster)
    if demand is not None:
        ago = max(time.time() - demand.sent_at, 0.0)
        stdout.print(
            f"asked of Ray's autoscaler: {demand.describe()} ({ago:.0f} s ago, by "
            f"{demand.dispatcher})"
        )
        for entry in demand.bundles:
            shape = ", ".join(f"{name}: {value:g}" for name, value in entry.bundle.items())
            stdout.print(f"  {entry.count} x {{{shape}}}")


def _memory(client: Client) -> RedisMemory | None:
    try:
        return client.store.memory()
    except redis.exceptions.NoPermissionError:  # an ACL without INFO: status goes on without
        return None


def _numbers(values: dict[str, Any], keys: tuple[str, ...]) -> str:
    """`   val bits/dim 1.2345   test bits/dim 1.2400` for the keys that hold a number."""
    shown = [
        f"   {key.replace('_bits_per_dim', ' bits/dim')} {values[key]:.4f}"
        for key in keys
        if isinstance(values.get(key), int | float)
    ]
    return "".join(shown)


def cancel(args: argparse.Namespace) -> int:
    status = open_client().job(args.job_id).cancel()
    if status is JobStatus.RUNNING and not args.json:
        # One final state everywhere: a run stopped, or one that finished first, ends cancelled.
        print(f"{args.job_id}: cancel requested; it ends cancelled once its dispatcher acts")
        return 0
    return _print_status(args, status)


def retry(args: argparse.Namespace) -> int:
    open_client().job(args.job_id).retry()
    return _print_status(args, JobStatus.QUEUED)


def set_priority(args: argparse.Namespace) -> int:
    open_client().job(args.job_id).set_priority(args.priority)
    if args.json:
        print(json.dumps({"job_id": args.job_id, "priority": args.priority}))
    else:
        print(f"{args.job_id}: priority {args.priority}")
    return 0


def _print_status(args: argparse.Namespace, new_status: JobStatus) -> int:
    if args.json:
        print(json.dumps({"job_id": args.job_id, "status": new_status.value}))
    else:
        print(f"{args.job_id}: {new_status.value}")
    return 0


def logs(args: argparse.Namespace) -> int:
    job = open_client().job(args.job_id)  # an unknown job is an error, not an empty log
    # One cursor for the tail and the follow, so no line is skipped or printed twice.
    printed = max(0, job.log_length() - args.tail)
    while True:
        # The status is read before the lines: a job that ends after this read shows its
        # last lines on the next pass before the loop stops.
        record = job.record()
        new_lines = job.logs_since(printed)
        for line in new_lines:
            print(line)
        sys.stdout.flush()
        printed += len(new_lines)
        if not args.follow or (record.status.is_final and not new_lines):
            return 0
        time.sleep(FOLLOW_POLL_SECONDS)


def samples(args: argparse.Namespace) -> int:
    job = open_client().job(args.job_id)  # an unknown job is an error before a folder is made
    args.out.mkdir(parents=True, exist_ok=True)
    written, unreadable = 0, []
    for ref in job.images():
        try:
            png = job.png(ref)
        except ImageUnreadable as exc:  # one lost file must not cost the user the others
            unreadable.append(str(exc))
            continue
        (args.out / f"{ref.name}-epoch{ref.epoch:03d}.png").write_bytes(png)
        written += 1
    print(f"wrote {written} PNG file(s) to {args.out}")
    for problem in unreadable:
        stderr.print(f"not written: {problem}", markup=False)
    return EXIT_INVALID if unreadable else 0
