"""Every Redis key genfleet writes, every TTL and cap, under one configurable prefix.

Queue state (`<prefix>:...`):
    queue                     zset  queued job ids; score orders by priority, then submit order
    delayed                   zset  job ids waiting out a retry backoff; score = due time (s)
    running                   zset  claimed job ids; score = lease deadline (s, server clock)
    order                     str   counter behind FIFO order and the listing's "newest first"
    job:<id>                  hash  the job record (jobs/records.py), spec and result as JSON
    events:<id>               list  JSON status events
    idempotency:<sha256>      str   job id of a submit with that idempotency key (TTL 24 h)
    index:all / index:status:<status> / index:model:<model> / index:kind:<kind>
                              zset  job ids by submit order, for filtered listings
Artifacts: metrics:<id>[:trial:<t>] (list), images:<id>[:trial:<t>] (hash "<name>:<epoch>" ->
JSON index entry of a PNG in the runs' storage; stores from before it held the PNG itself),
logs:<id> (capped list) with log_count:<id> (lines ever appended), checkpoints:<id> (list),
trials:<id> (hash), artifact_trials:<id> (set: the trials that have artifact keys), and
footprint:<id> (hash: bytes held and entries dropped per capped list). A run writes them only
through `write_run.lua`, behind its lease; tools outside a run through `write_artifacts.lua`.
Metrics, logs and events are capped by bytes (the *_BYTES_KEPT below), oldest first, so that a
job's footprint is bounded whatever it runs for; images and checkpoints live in storage.
    deleted                   zset  ids of deleted jobs whose folders may remain; score = when
                              (s), so that a delete stopped half way is finished later
Dispatchers (each reports its Ray cluster view and running jobs for the dashboard):
    dispatcher:<dispatcher id> str   that dispatcher's JSON status (TTL 30 s)
    dispatchers               zset  dispatcher ids; score = when its status expires (s, server
                              clock), so a read drops the dead ones without SCAN

Lua scripts build per-job and per-dispatcher keys from the prefixes in `lua_key_table`, so that
this module stays the one place that spells a key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
DISPATCHER_STATUS_TTL_SECONDS = 30  # a dispatcher publishes every 2 s; 30 s of silence: dead
LOG_LINES_KEPT = 5000
# Per list, oldest entries dropped first. 100 epochs of metrics take about 30 KiB and a run's
# log about 100 KiB, so only runs of thousands of epochs or chatty ones lose their start.
LOG_BYTES_KEPT = 256 * 2**10
METRIC_BYTES_KEPT = 256 * 2**10
EVENT_BYTES_KEPT = 64 * 2**10
# One log line or event, cut beyond: a single huge line would push every other out of its list.
ENTRY_CHARS_KEPT = 8 * 2**10
TRACEBACK_CHARS_KEPT = 32 * 2**10
# A job handed back this many times by crashes (leases that expired, relays or nodes lost) is
# dead: something about it takes its dispatchers down. Clean stops (SIGTERM) do not count.
MAX_INTERRUPTIONS = 10
# What a dispatcher writes for one run in one tick, so that a run flooding its relay never holds
# up the other runs' lease renewals; the rest waits for the next tick, in order.
RUN_WRITES_PER_TICK = 256
RUN_WRITE_BYTES_PER_TICK = 8 * 2**20
TRIAL_INFIX = ":trial:"  # between a job's artifact key and a trial id

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # GENFLEET_PREFIX
_TRIAL = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_trial_id(trial: str) -> str:
    if not _TRIAL.fullmatch(trial):
        raise ValueError(f"trial: must match {_TRIAL.pattern}, got {trial!r}")
    return trial


@dataclass(frozen=True)
class Keys:
    prefix: str = "genfleet"

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(
                f"GENFLEET_PREFIX: must match {PREFIX_PATTERN.pattern}, got {self.prefix!r}"
            )

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def queue(self) -> str:
        return self._key("queue")

    @property
    def delayed(self) -> str:
        return self._key("delayed")

    @property
    def running(self) -> str:
        return self._key("running")

    @property
    def order(self) -> str:
        return self._key("order")

    @property
    def dispatchers(self) -> str:
        return self._key("dispatchers")

    @property
    def all_jobs(self) -> str:
        return self._key("index", "all")

    def job(self, job_id: str) -> str:
        return self._key("job", job_id)

    def events(self, job_id: str) -> str:
        return self._key("events", job_id)

    def idempotency(self, idempotency_key: str) -> str:
        # Hashed so that any client string makes a short key without separators in it.
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return self._key("idempotency", digest)

    def status_index(self, status: str) -> str:
        return self._key("index", "status", status)

    def model_index(self, model_type: str) -> str:
        return self._key("index", "model", model_type)

    def kind_index(self, kind: str) -> str:
        return self._key("index", "kind", kind)

    def scratch(self, token: str) -> str:
        return self._key("scratch", token)

    def metrics(self, job_id: str, trial: str | None = None) -> str:
        return self._artifact("metrics", job_id, trial)

    def images(self, job_id: str, trial: str | None = None) -> str:
        return self._artifact("images", job_id, trial)

    def logs(self, job_id: str) -> str:
        return self._key("logs", job_id)

    def log_count(self, job_id: str) -> str:
        return self._key("log_count", job_id)

    def checkpoints(self, job_id: str) -> str:
        return self._key("checkpoints", job_id)

    def trials(self, job_id: str) -> str:
        return self._key("trials", job_id)

    def artifact_trials(self, job_id: str) -> str:
        return self._key("artifact_trials", job_id)

    def footprint(self, job_id: str) -> str:
        return self._key("footprint", job_id)

    @property
    def deleted(self) -> str:
        return self._key("deleted")

    def dispatcher(self, dispatcher_id: str) -> str:
        return self._key("dispatcher", dispatcher_id)

    def _artifact(self, family: str, job_id: str, trial: str | None) -> str:
        if trial is None:
            return self._key(family, job_id)
        return self._key(family, job_id) + TRIAL_INFIX + check_trial_id(trial)

    def lua_key_table(self) -> str:
        """A Lua `KEY` table with the fixed keys and the prefixes of the per-job ones."""
        entries = {
            "queue": self.queue,
            "delayed": self.delayed,
            "running": self.running,
            "order": self.order,
            "all_jobs": self.all_jobs,
            "job": self.job(""),
            "events": self.events(""),
            "status_index": self.status_index(""),
            "model_index": self.model_index(""),
            "kind_index": self.kind_index(""),
            "logs": self.logs(""),
            "log_count": self.log_count(""),
            "metrics": self.metrics(""),
            "images": self.images(""),
            "checkpoints": self.checkpoints(""),
            "trials": self.trials(""),
            "artifact_trials": self.artifact_trials(""),
            "footprint": self.footprint(""),
            "deleted": self.deleted,
            "scratch": self.scratch(""),
            "trial_infix": TRIAL_INFIX,
            "dispatchers": self.dispatchers,
            "dispatcher": self.dispatcher(""),
        }
        # The prefix pattern admits no quote or backslash, so plain quoting is safe.
        body = ", ".join(f"{name} = '{key}'" for name, key in entries.items())
        caps = {
            "log_lines": LOG_LINES_KEPT,
            "log_bytes": LOG_BYTES_KEPT,
            "metric_bytes": METRIC_BYTES_KEPT,
            "event_bytes": EVENT_BYTES_KEPT,
        }
        cap_body = ", ".join(f"{name} = {cap}" for name, cap in caps.items())
        return f"local KEY = {{{body}}}\nlocal CAP = {{{cap_body}}}\n"
