"""Job records and events, and what a run leaves behind: metrics, images, logs, checkpoints,
sweep trials; plus the status each dispatcher publishes, which the dashboard reads merged.

The queue (jobs/queue.py) owns every status change; the store reads records and keeps artifacts.
A run writes only through `write_for_run`, one Lua script per batch behind the run's lease (the
fencing token), so nothing from a copy of the run that lost its lease lands. The single-item
writers below serve imports, fixtures and tools outside any run. Writes that touch the record
itself (progress, events) check that the job exists in the same script, so a late write for an
unknown job raises instead of leaving half a record. Readers of artifacts return empty results
for a job that has none.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from redis import Redis

from jobs.keys import LOG_LINES_KEPT, Keys, check_trial_id
from jobs.messages import Checkpoint as CheckpointMessage
from jobs.messages import (  # the store's own Checkpoint is the record a reader gets
    Fatal,
    Image,
    Log,
    Message,
    Metrics,
    RunInfo,
    TrialUpdate,
)
from jobs.queue import load_script
from jobs.records import Event, JobNotFound, JobRecord, JobStatus, Lease, LeaseLost

IMAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # "samples", "reconstructions", ...
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    total: int  # jobs matching the filters, over all pages


@dataclass(frozen=True, order=True)
class ImageRef:
    name: str
    epoch: int


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    uri: str
    trial: str | None = None


class ImageNotFound(LookupError):
    pass


class JobStore:
    def __init__(self, redis: Redis, prefix: str = "genfleet") -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._merge_progress = load_script(redis, self.keys, "merge_progress")
        self._note = load_script(redis, self.keys, "note")
        self._logs_since = load_script(redis, self.keys, "logs_since")
        self._publish_dispatcher = load_script(redis, self.keys, "publish_dispatcher")
        self._live_dispatchers = load_script(redis, self.keys, "live_dispatchers")
        self._write_run = load_script(redis, self.keys, "write_run")

    def write_for_run(self, lease: Lease, messages: list[Message]) -> None:
        """Store a run's messages, all or none, behind its lease; raises LeaseLost when a
        message to store comes from a lease that no longer holds the job.

        A message that cannot be stored (a name or value the store refuses) becomes a log line
        that says so, and the rest of the batch still lands. Kinds only the dispatcher uses
        (workers, placement groups, controllers) are skipped.
        """
        writes: list[str | bytes] = []
        for message in messages:
            try:
                write = _run_write(message)
            except Exception as exc:  # one bad message must not hold back the rest, ever
                write = ("log", "", f"dropped a message ({type(message).__name__}): {exc}", "")
            if write is not None:
                writes.extend(write)
        if not writes:
            return
        outcome = self._write_run(
            args=[lease.job_id, lease.owner, lease.claim, LOG_LINES_KEPT, *writes]
        )
        if outcome == b"missing":
            raise JobNotFound(lease.job_id)
        if outcome == b"lost":
            raise LeaseLost(lease.job_id, lease.owner)

    def get(self, job_id: str) -> JobRecord:
        fields = self.redis.hgetall(self.keys.job(job_id))
        if not fields:
            raise JobNotFound(job_id)
        return JobRecord.from_fields(fields)

    def events(self, job_id: str) -> list[Event]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.job(job_id))
        pipe.lrange(self.keys.events(job_id), 0, -1)
        exists, raw_events = pipe.execute()
        if not exists:
            raise JobNotFound(job_id)
        return [Event.from_json(raw) for raw in raw_events]

    def append_event(self, job_id: str, message: str, worker: str | None = None) -> None:
        """A dispatcher note in the job's history, under its current status."""
        if not self._note(args=[job_id, message, worker or ""]):
            raise JobNotFound(job_id)

    def list_jobs(
        self,
        status: JobStatus | str | None = None,
        model: str | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> Page:
        """Jobs newest first (or oldest first); the filters combine (AND)."""
        indexes = []
        if status is not None:
            indexes.append(self.keys.status_index(JobStatus(status)))
        if model is not None:
            indexes.append(self.keys.model_index(model))
        if kind is not None:
            indexes.append(self.keys.kind_index(kind))
        last = offset + limit - 1
        pipe = self.redis.pipeline(transaction=len(indexes) > 1)
        if len(indexes) > 1:
            # Intersect into a scratch key that the same transaction deletes.
            source = self.keys.scratch(secrets.token_hex(8))
            pipe.zinterstore(source, indexes, aggregate="MAX")
            pipe.zrange(source, offset, last, desc=not oldest_first)
            pipe.delete(source)
            total, ids, _ = pipe.execute()
        else:
            source = indexes[0] if indexes else self.keys.all_jobs
            pipe.zcard(source)
            pipe.zrange(source, offset, last, desc=not oldest_first)
            total, ids = pipe.execute()
        return Page(self.get_many([raw.decode() for raw in ids]), total)

    def get_many(self, job_ids: list[str]) -> list[JobRecord]:
        """Records of these jobs in this order, one round trip; unknown ids are skipped."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [JobRecord.from_fields(fields) for fields in pipe.execute() if fields]

    def counts_by_status(self) -> dict[JobStatus, int]:
        pipe = self.redis.pipeline(transaction=False)
        for status in JobStatus:
            pipe.zcard(self.keys.status_index(status))
        return dict(zip(JobStatus, pipe.execute(), strict=True))

    def append_metrics(
        self, job_id: str, metrics: dict[str, Any], trial: str | None = None
    ) -> None:
        """One row (an epoch: epoch, step, train_bits_per_dim, val_bits_per_dim, ...).

        A job's own rows also update its record's progress with their latest values. Values
        that are not finite (a diverged loss) are kept as None, since JSON has no NaN.
        """
        row = json.dumps(_metric_row(metrics))
        if trial is None and not self._merge_progress(args=[job_id, row]):
            raise JobNotFound(job_id)
        self.redis.rpush(self.keys.metrics(job_id, trial), row)

    def metrics(self, job_id: str, trial: str | None = None) -> list[dict[str, Any]]:
        return [
            json.loads(raw) for raw in self.redis.lrange(self.keys.metrics(job_id, trial), 0, -1)
        ]

    def put_image(
        self, job_id: str, name: str, epoch: int, png: bytes, trial: str | None = None
    ) -> None:
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"image {name!r}: must be PNG bytes, got {png[:8]!r}...")
        self.redis.hset(self.keys.images(job_id, trial), _image_field(name, epoch), png)

    def list_images(self, job_id: str, trial: str | None = None) -> list[ImageRef]:
        fields = self.redis.hkeys(self.keys.images(job_id, trial))
        refs = (raw.decode().rpartition(":") for raw in fields)
        return sorted(ImageRef(name, int(epoch)) for name, _, epoch in refs)

    def get_image(self, job_id: str, name: str, epoch: int, trial: str | None = None) -> bytes:
        png = self.redis.hget(self.keys.images(job_id, trial), _image_field(name, epoch))
        if png is None:
            raise ImageNotFound(f"job {job_id}: no image {name!r} for epoch {epoch}")
        return png

    def append_log(self, job_id: str, line: str) -> None:
        """Keeps the last LOG_LINES_KEPT lines, and counts every line ever appended."""
        pipe = self.redis.pipeline()
        pipe.rpush(self.keys.logs(job_id), line)
        pipe.ltrim(self.keys.logs(job_id), -LOG_LINES_KEPT, -1)
        pipe.incr(self.keys.log_count(job_id))
        pipe.execute()

    def logs(self, job_id: str, tail: int = 200) -> list[str]:
        return [raw.decode() for raw in self.redis.lrange(self.keys.logs(job_id), -tail, -1)]

    def log_length(self, job_id: str) -> int:
        """Lines ever appended (trimmed ones too): the cursor for `logs_since`."""
        return int(self.redis.get(self.keys.log_count(job_id)) or 0)

    def logs_since(self, job_id: str, seen: int) -> list[str]:
        """Lines appended after the first `seen`, as many as the capped log still holds."""
        return [raw.decode() for raw in self._logs_since(args=[job_id, seen])]

    def add_checkpoint(self, job_id: str, epoch: int, uri: str, trial: str | None = None) -> None:
        entry = {"epoch": epoch, "uri": uri, "trial": trial and check_trial_id(trial)}
        self.redis.rpush(self.keys.checkpoints(job_id), json.dumps(entry))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Oldest first, so a resume takes the last one of its trial."""
        raw_entries = self.redis.lrange(self.keys.checkpoints(job_id), 0, -1)
        return [Checkpoint(**json.loads(raw)) for raw in raw_entries]

    def put_trial(self, job_id: str, trial_id: str, info: dict[str, Any]) -> None:
        """A sweep trial's config, status, metric value, stop reason and iterations."""
        self.redis.hset(self.keys.trials(job_id), check_trial_id(trial_id), json.dumps(info))

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        """Each trial's info with its `trial_id`, ordered by trial id."""
        stored = self.redis.hgetall(self.keys.trials(job_id))
        by_id = sorted((trial.decode(), json.loads(info)) for trial, info in stored.items())
        return [{"trial_id": trial, **info} for trial, info in by_id]

    def put_dispatcher_status(
        self, dispatcher_id: str, status: dict[str, Any], ttl_seconds: int
    ) -> None:
        """This dispatcher's Ray nodes, resources and jobs; expires unless published again, so
        that a dispatcher that died drops out of `dispatcher_statuses`."""
        self._publish_dispatcher(args=[dispatcher_id, json.dumps(status), ttl_seconds])

    def dispatcher_statuses(self) -> list[dict[str, Any]]:
        """Each live dispatcher's status, its id under "dispatcher", newest first.

        Ordered by expiry, which is report order because every dispatcher publishes with the
        same TTL.
        """
        reply = self._live_dispatchers()
        pairs = zip(reply[::2], reply[1::2], strict=True)
        return [{**json.loads(raw), "dispatcher": worker.decode()} for worker, raw in pairs]

    def cluster_status(self) -> dict[str, Any] | None:
        """Every live dispatcher's status as one (see `merge_dispatcher_statuses`), or None
        when no dispatcher is alive."""
        statuses = self.dispatcher_statuses()
        return merge_dispatcher_statuses(statuses) if statuses else None


def merge_dispatcher_statuses(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Nodes, free resources and waiting jobs from the newest status, since every dispatcher
    watches the one Ray cluster and the one queue; running jobs from all of them, since each
    lists only the jobs it runs; the demand sent last, since Ray keeps only the latest request.

    `statuses` newest first, as `JobStore.dispatcher_statuses` returns them.
    """
    running_jobs: dict[str, list[str]] = {}
    for status in reversed(statuses):  # a job that just changed hands: the newer owner wins
        running_jobs.update(status.get("running_jobs", {}))
    demands = [status["demand"] for status in statuses if status.get("demand")]
    newest = statuses[0]
    return {
        "nodes": newest.get("nodes", []),
        "available": newest.get("available", {}),
        "running_jobs": running_jobs,
        "waiting": newest.get("waiting", []),
        "demand": max(demands, key=lambda demand: demand["sent_at"], default=None),
        "max_cluster": newest.get("max_cluster", ""),
        "dispatchers": [
            {
                "dispatcher": status["dispatcher"],
                "updated_at": status.get("updated_at"),
                "running_job_count": len(status.get("running_jobs", {})),
            }
            for status in statuses
        ],
    }


def _metric_row(metrics: dict[str, Any]) -> dict[str, float | int | None]:
    row: dict[str, float | int | None] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"metrics.{name}: must be a number, got {value!r}")
        if isinstance(value, Integral):
            row[name] = int(value)
        else:
            row[name] = float(value) if math.isfinite(value) else None
    return row


def _image_field(name: str, epoch: int) -> str:
    if not IMAGE_NAME.fullmatch(name):
        raise ValueError(f"image name: must match {IMAGE_NAME.pattern}, got {name!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch: must be an integer >= 0, got {epoch!r}")
    return f"{name}:{epoch}"


RunWrite = tuple[str, str, str | bytes, str | bytes]  # kind, trial or '', two values


def _run_write(message: Message) -> RunWrite | None:
    """How `write_run.lua` stores one message; None for kinds that are not stored."""
    trial = "" if message.trial is None else check_trial_id(message.trial)
    prefix = f"[{trial}] " if trial else ""
    match message:
        case Metrics(metrics=metrics):
            return ("metrics", trial, json.dumps(_metric_row(metrics)), "")
        case Image(name=name, epoch=epoch, png=png):
            if not png.startswith(PNG_SIGNATURE):
                raise ValueError(f"image {name!r}: must be PNG bytes, got {png[:8]!r}...")
            return ("image", trial, _image_field(name, epoch), png)
        case Log(line=line):
            return ("log", "", prefix + line, "")
        case CheckpointMessage(epoch=epoch, path=path):
            entry = {"epoch": epoch, "uri": path, "trial": trial or None}
            return ("checkpoint", "", json.dumps(entry), "")
        case TrialUpdate(info=info):
            return ("trial", trial, json.dumps(info), "")
        case RunInfo(info=info):
            return ("event", "", "run info: " + ", ".join(f"{k}={v}" for k, v in info.items()), "")
        case Fatal(error=error):
            return ("log", "", f"{prefix}run stopped: {error}", "")
    return None
