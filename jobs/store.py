"""Job records and events, and what a run leaves behind: metrics, images, logs, checkpoints,
sweep trials; plus the status each dispatcher publishes, which the dashboard reads merged.

The queue (jobs/queue.py) owns every status change; the store reads records and keeps artifacts.
A run writes only through `write_for_run`, one Lua script per batch behind the run's lease (the
fencing token), so nothing from a copy of the run that lost its lease lands. The single-item
writers below serve imports, fixtures and tools outside any run, through one script that
checks that the job exists, so that a late write for an unknown or deleted job raises
instead of leaving keys behind. Readers of artifacts return empty results for a job that has
none.

Images live in the runs' storage (jobs/run_storage.py), written before their index entry in
Redis, so that an entry always points at a whole file; a file whose entry never landed (a
refused write) lies unseen in the job's folder until the job is deleted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from redis import Redis
from redis.exceptions import OutOfMemoryError

from jobs.keys import ENTRY_CHARS_KEPT, Keys, check_trial_id
from jobs.lua_scripts import load_script
from jobs.messages import Checkpoint as CheckpointMessage
from jobs.messages import (  # the store's own Checkpoint is the record a reader gets
    Fatal,
    Image,
    Log,
    Message,
    Metrics,
    RunInfo,
    TrialUpdate,
    Unrecoverable,
)
from jobs.records import Event, JobNotFound, JobRecord, JobStatus, Lease, LeaseLost
from jobs.run_storage import ImageUnreadable, RunStorage, StoredFile, belongs_to, image_path

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


@dataclass(frozen=True)
class StoredImage:
    """An image's index entry in Redis: where its PNG lies in the runs' storage."""

    name: str
    epoch: int
    trial: str | None
    path: str
    bytes: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes) -> StoredImage:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class RedisMemory:
    """What Redis holds against its `maxmemory` (0: no limit), from INFO memory."""

    used: int
    maxmemory: int

    @property
    def full(self) -> bool:
        # noeviction refuses a write once used memory reaches the limit.
        return 0 < self.maxmemory <= self.used

    def describe(self) -> str:
        """`312.0 MiB of 1.0 GiB (30%)`, or `312.0 MiB (no maxmemory)`."""
        if not self.maxmemory:
            return f"{_size(self.used)} (no maxmemory)"
        return f"{_size(self.used)} of {_size(self.maxmemory)} ({self.used / self.maxmemory:.0%})"


def redis_full_text(since: float | None) -> str:
    """What to tell a user whose Redis refuses writes for memory, and since when (wall clock)."""
    when = (
        ""
        if since is None
        else f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
    )
    return (
        f"Redis is full{when}: it refuses new writes. Runs keep their messages and go on once "
        "space is freed; no job is claimed until then. Free space with `genfleet gc "
        "--finished-before 30d` or `genfleet delete JOB`, or raise GENFLEET_REDIS_MAXMEMORY."
    )


def _size(count: float) -> str:
    unit = "B"
    for larger in ("KiB", "MiB", "GiB"):
        if count < 1024:
            break
        count, unit = count / 1024, larger
    return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"


class ImageNotFound(LookupError):
    pass


class NoStorage(ImageUnreadable):
    """Images live in the runs' storage, and this store was given none."""


class JobStore:
    def __init__(
        self, redis: Redis, prefix: str = "genfleet", storage: RunStorage | None = None
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.storage = storage
        self._write_artifacts = load_script(redis, self.keys, "write_artifacts")
        self._note = load_script(redis, self.keys, "note")
        self._logs_since = load_script(redis, self.keys, "logs_since")
        self._publish_dispatcher = load_script(redis, self.keys, "publish_dispatcher")
        self._live_dispatchers = load_script(redis, self.keys, "live_dispatchers")
        self._write_run = load_script(redis, self.keys, "write_run")

    def write_for_run(self, lease: Lease, messages: list[Message]) -> bool:
        """Store a run's messages, all or none, behind its lease; raises LeaseLost when a
        message to store comes from a lease that no longer holds the job. False when none of
        them is of a kind the store keeps, so nothing was sent to Redis.

        A message that cannot be stored (a name or value the store refuses) becomes a log line
        that says so, and the rest of the batch still lands. Kinds only the dispatcher uses
        (workers, placement groups, controllers) are skipped.
        """
        writes, files = self._prepared(lease.job_id, messages, drop_bad=True)
        if not writes:
            return False
        outcome = self._write_run(args=[lease.job_id, lease.owner, lease.claim, *writes])
        if outcome == b"missing":
            self._forget_files(files)
            raise JobNotFound(lease.job_id)
        if outcome == b"lost":  # the files lie unseen in the job's folder, deleted with it
            raise LeaseLost(lease.job_id, lease.owner)
        return True

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

    def append_event(self, job_id: str, message: str, dispatcher_id: str | None = None) -> None:
        """A note in the job's history, under its current status."""
        if not self._note(args=[job_id, message, dispatcher_id or ""]):
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
            try:
                total, ids, _ = pipe.execute()
            except OutOfMemoryError:  # a full Redis has no room for the scratch key
                total, ids = self._intersected(indexes, offset, limit, oldest_first)
        else:
            source = indexes[0] if indexes else self.keys.all_jobs
            pipe.zcard(source)
            pipe.zrange(source, offset, last, desc=not oldest_first)
            total, ids = pipe.execute()
        return Page(self.get_many([raw.decode() for raw in ids]), total)

    def _intersected(
        self, indexes: list[str], offset: int, limit: int, oldest_first: bool
    ) -> tuple[int, list[bytes]]:
        """What ZINTERSTORE gives, worked out here: the jobs in every index, by submit order."""
        pipe = self.redis.pipeline(transaction=False)
        for index in indexes:
            pipe.zrange(index, 0, -1, withscores=True)
        scored = [dict(pairs) for pairs in pipe.execute()]
        common = set(scored[0]).intersection(*scored[1:])
        ordered = sorted(common, key=scored[0].__getitem__, reverse=not oldest_first)
        return len(ordered), ordered[offset : offset + limit]

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
        self.write_outside_run(job_id, [Metrics(metrics, trial=trial)])

    def write_outside_run(self, job_id: str, messages: list[Message]) -> None:
        """Store messages for a job without a lease (imports, fixtures, tools), all or none;
        raises JobNotFound for a job that does not exist (or no longer does)."""
        writes, files = self._prepared(job_id, messages, drop_bad=False)
        if writes and self._write_artifacts(args=[job_id, *writes]) == b"missing":
            self._forget_files(files)
            raise JobNotFound(job_id)

    def _prepared(
        self, job_id: str, messages: list[Message], drop_bad: bool
    ) -> tuple[list[str | bytes], list[str]]:
        """The script arguments that store these messages, and the image files written for
        them (before the script runs, so that an index entry always points at a whole file).

        `drop_bad`: a message the store refuses (a bad name or value) becomes a log line that
        says so, and the rest still lands; otherwise its ValueError is raised.
        """
        writes: list[str | bytes] = []
        files: list[str] = []
        for message in messages:
            try:
                write = _run_write(message)
            except Exception as exc:
                if not drop_bad:
                    raise
                write = ("log", "", f"dropped a message ({type(message).__name__}): {exc}", "")
            if isinstance(message, Image) and write is not None and write[0] == "image":
                # Outside the try: storage that cannot be written now is retried, not dropped.
                entry = self.stored_image(job_id, message)
                files.append(entry.path)
                write = ("image", write[1], write[2], entry.to_json())
            if write is not None:
                writes.extend(write)
        return writes, files

    def stored_image(self, job_id: str, image: Image) -> StoredImage:
        """Put an image's PNG into the runs' storage; returns its index entry."""
        if self.storage is None:
            raise NoStorage("images are kept in the runs' storage, and none was given")
        digest = hashlib.sha256(image.png).hexdigest()
        # The digest in the name: a file, once an entry points at it, never changes.
        path = image_path(job_id, image.trial, image.name, image.epoch, digest)
        stored = self.storage.write(path, image.png)
        return StoredImage(image.name, image.epoch, image.trial, path, stored.size, stored.sha256)

    def _forget_files(self, paths: list[str]) -> None:
        """Remove what a refused write put into the folder of a job that is gone (deleted,
        or lost with a Redis that lost its data), and the folders only those files were in:
        nothing would ever find them there. Checkpoints beside them stay."""
        if self.storage is not None:
            for path in paths:
                self.storage.remove(path)
            one_per_folder = {path.rpartition("/")[0]: path for path in paths}
            for path in one_per_folder.values():
                self.storage.remove_empty_folders(path)

    def metrics(self, job_id: str, trial: str | None = None) -> list[dict[str, Any]]:
        return [
            json.loads(raw) for raw in self.redis.lrange(self.keys.metrics(job_id, trial), 0, -1)
        ]

    def put_image(
        self, job_id: str, name: str, epoch: int, png: bytes, trial: str | None = None
    ) -> None:
        self.write_outside_run(job_id, [Image(name, epoch, png, trial=trial)])

    def list_images(self, job_id: str, trial: str | None = None) -> list[ImageRef]:
        fields = self.redis.hkeys(self.keys.images(job_id, trial))
        refs = (raw.decode().rpartition(":") for raw in fields)
        return sorted(ImageRef(name, int(epoch)) for name, _, epoch in refs)

    def get_image(self, job_id: str, name: str, epoch: int, trial: str | None = None) -> bytes:
        """The PNG, from storage (raises ImageUnreadable when its file is missing or damaged),
        or from Redis itself for an image stored before images moved out of it."""
        value = self.redis.hget(self.keys.images(job_id, trial), _image_field(name, epoch))
        if value is None:
            raise ImageNotFound(f"job {job_id}: no image {name!r} for epoch {epoch}")
        if value.startswith(PNG_SIGNATURE):
            return value
        entry = StoredImage.from_json(value)
        if not belongs_to(job_id, entry.path):
            raise ImageUnreadable(f"{entry.path}: not in job {job_id}'s folder; not read")
        if self.storage is None:
            raise NoStorage(f"{entry.path}: images are kept in the runs' storage, none given")
        return self.storage.read(StoredFile(entry.path, entry.bytes, entry.sha256))

    def append_log(self, job_id: str, line: str) -> None:
        """Keeps the newest lines within LOG_LINES_KEPT and LOG_BYTES_KEPT, and counts every
        line ever appended."""
        self.write_outside_run(job_id, [Log(line)])

    def logs(self, job_id: str, tail: int = 200) -> list[str]:
        return [raw.decode() for raw in self.redis.lrange(self.keys.logs(job_id), -tail, -1)]

    def log_length(self, job_id: str) -> int:
        """Lines ever appended (trimmed ones too): the cursor for `logs_since`."""
        return int(self.redis.get(self.keys.log_count(job_id)) or 0)

    def logs_since(self, job_id: str, seen: int) -> list[str]:
        """Lines appended after the first `seen`, as many as the capped log still holds."""
        return [raw.decode() for raw in self._logs_since(args=[job_id, seen])]

    def add_checkpoint(self, job_id: str, epoch: int, uri: str, trial: str | None = None) -> None:
        self.write_outside_run(job_id, [CheckpointMessage(epoch, uri, trial=trial)])

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Oldest first, so a resume takes the last one of its trial."""
        raw_entries = self.redis.lrange(self.keys.checkpoints(job_id), 0, -1)
        return [Checkpoint(**json.loads(raw)) for raw in raw_entries]

    def put_trial(self, job_id: str, trial_id: str, info: dict[str, Any]) -> None:
        """A sweep trial's config, status, metric value, stop reason and iterations."""
        self.write_outside_run(job_id, [TrialUpdate(check_trial_id(trial_id), info)])

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

    def memory(self) -> RedisMemory:
        info = self.redis.info("memory")
        return RedisMemory(int(info["used_memory"]), int(info.get("maxmemory", 0)))

    def cluster_status(self) -> dict[str, Any] | None:
        """Every live dispatcher's status as one (see `merge_dispatcher_statuses`), or None
        when no dispatcher is alive."""
        statuses = self.dispatcher_statuses()
        return merge_dispatcher_statuses(statuses) if statuses else None

    def job_ids(self, status: JobStatus | None = None) -> list[str]:
        """Every job's id (of one status), oldest first."""
        index = self.keys.all_jobs if status is None else self.keys.status_index(status)
        return [raw.decode() for raw in self.redis.zrange(index, 0, -1)]

    def trial_ids(self, job_id: str) -> list[str]:
        """A sweep's trials: those in its trials hash and those that only wrote artifacts."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hkeys(self.keys.trials(job_id))
        pipe.smembers(self.keys.artifact_trials(job_id))
        listed, with_artifacts = pipe.execute()
        return sorted({raw.decode() for raw in (*listed, *with_artifacts)})


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
        # The earliest any live dispatcher saw a write refused for memory and not yet again
        # accepted; None while Redis takes writes.
        "redis_full_since": min(
            (status["redis_full_since"] for status in statuses if status.get("redis_full_since")),
            default=None,
        ),
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
            return ("log", "", _clipped(prefix + line), "")
        case CheckpointMessage(epoch=epoch, path=path):
            entry = {"epoch": epoch, "uri": path, "trial": trial or None}
            return ("checkpoint", "", json.dumps(entry), "")
        case TrialUpdate(info=info):
            return ("trial", trial, json.dumps(info), "")
        case RunInfo(info=info):
            text = "run info: " + ", ".join(f"{k}={v}" for k, v in info.items())
            return ("event", "", _clipped(text), "")
        case Fatal(error=error):
            return ("log", "", _clipped(f"{prefix}run stopped: {error}"), "")
        case Unrecoverable(error=error):
            return ("log", "", _clipped(f"{prefix}run failing, not to be retried: {error}"), "")
    return None


def _clipped(text: str) -> str:
    """At most ENTRY_CHARS_KEPT characters: one huge line must not push every other line of a
    capped list out."""
    if len(text) <= ENTRY_CHARS_KEPT:
        return text
    cut = len(text) - ENTRY_CHARS_KEPT
    return f"{text[:ENTRY_CHARS_KEPT]} [... {cut} more characters dropped]"
