"""The Python client: submit, watch and read jobs from a notebook or a script.

`Client()` connects as the `genfleet` command does (GENFLEET_REDIS_URL, else the embedded
Redis in GENFLEET_HOME); the command line is built on it, so both take one code path. It
needs neither Ray nor torch: the dispatcher runs the jobs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import redis
from PIL import Image

from genfleet.errors import JobTimeout, NotASweep
from genfleet.specs import SpecLike, as_spec
from jobs.deletion import Deleted, collect_garbage, delete_jobs, parse_age
from jobs.queue import JobQueue
from jobs.records import Event, JobRecord, JobStatus
from jobs.redis_server import connect
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.store import Checkpoint, ImageRef, JobStore

if TYPE_CHECKING:
    import pandas as pd

POLL_SECONDS = 1.0  # how often `Job.wait` reads the record


class Client:
    """The queue and store on one Redis, as the CLI and the dashboard see them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.redis: redis.Redis = connect(self.settings)
        self.queue = JobQueue(self.redis, self.settings.prefix)
        self.store = JobStore(self.redis, self.settings.prefix, RunStorage(self.settings.storage))

    def submit(
        self,
        spec: SpecLike,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a spec (a JobSpec, a YAML file's path, YAML text or a dict) and return its job.

        Raises SpecError listing every field error, as `genfleet validate` prints them.
        """
        job_id = self.queue.submit(
            as_spec(spec), idempotency_key=idempotency_key, priority=priority
        )
        return Job(self, job_id)

    def job(self, job_id: str) -> Job:
        """The job with this id; raises JobNotFound when there is none."""
        self.store.get(job_id)
        return Job(self, job_id)

    def jobs(
        self,
        status: JobStatus | str | None = None,
        model: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, newest first (the filters combine), and how many match in all."""
        page = self.store.list_jobs(
            status=status, model=model, kind=kind, offset=offset, limit=limit
        )
        return JobPage(self, page.records, page.total)

    def delete(self, *job_ids: str) -> list[Deleted]:
        """Remove finished jobs (a sweep with its trials) and all they left in Redis and in
        storage: logs, metrics, images, checkpoints, Ray results. Raises JobNotFound, or
        NotDeletable for a queued or running job, before removing anything."""
        return delete_jobs(self.store, job_ids)

    def collect_garbage(
        self,
        finished_before: str | float,
        statuses: Iterable[str] | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete the jobs that finished more than `finished_before` ago ("30d", "12h", or
        seconds), in these final statuses (all when None); returns their ids. `dry_run`
        only lists them."""
        if isinstance(finished_before, str):
            finished_before = parse_age(finished_before)
        return collect_garbage(self.store, finished_before, statuses, dry_run)


@dataclass(frozen=True)
class JobPage(Sequence["Job"]):
    """A list of jobs with the records they were read with, in one round trip, and `total`:
    how many jobs match the filters over all pages."""

    client: Client
    records: list[JobRecord]
    total: int

    @overload
    def __getitem__(self, index: int) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...

    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            return [Job(self.client, record.id) for record in self.records[index]]
        return Job(self.client, self.records[index].id)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class Trial:
    """A sweep trial: its id, the hyperparameters Tune chose, and how it ended."""

    trial_id: str
    config: dict[str, Any]
    status: str
    metric: float | None  # the sweep's metric (val), the one trials are ranked on
    test_metric: float | None  # its test split counterpart, after the last epoch


class Job:
    """One job in the queue; every method reads or changes it in Redis, nothing is cached."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def record(self) -> JobRecord:
        return self.client.store.get(self.id)

    def status(self) -> JobStatus:
        return self.record().status

    def events(self) -> list[Event]:
        return self.client.store.events(self.id)

    def wait(self, timeout: float | None = None, progress: bool = True) -> JobRecord:
        """Block until the job ends (succeeded, failed, cancelled or dead) and return its record.

        `progress` shows a bar of epochs (trials for a sweep) that works in a terminal and in
        Jupyter. Raises JobTimeout after `timeout` seconds; the job keeps running.
        """
        from genfleet.progress import JobProgress

        deadline = None if timeout is None else time.monotonic() + timeout
        with JobProgress(self.id, enabled=progress) as bar:
            while True:
                record = self.record()
                bar.show(record, self.client.store)
                if record.status.is_final:
                    return record
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(self.id, timeout or 0.0, record.status)
                time.sleep(POLL_SECONDS)

    def metrics(self, trial: str | None = None) -> pd.DataFrame:
        """One row per reported epoch (a sweep trial's with `trial`), columns as the loop names
        them: epoch, step, train_bits_per_dim, val_bits_per_dim, test_bits_per_dim, ..."""
        import pandas as pd  # on first use: the CLI, which never calls this, starts faster

        return pd.DataFrame(self.client.store.metrics(self.id, trial=trial))

    def samples(self, epoch: int | None = None, trial: str | None = None) -> dict[str, Image.Image]:
        """Every image grid of one epoch (the latest when None), by name: samples,
        reconstructions, completions, interpolations, as the model makes them."""
        refs = self.images(trial)
        if not refs:
            return {}
        chosen = max(ref.epoch for ref in refs) if epoch is None else epoch
        return {
            ref.name: Image.open(io.BytesIO(self.png(ref, trial)))
            for ref in refs
            if ref.epoch == chosen
        }

    def images(self, trial: str | None = None) -> list[ImageRef]:
        """The (name, epoch) of every stored grid."""
        return self.client.store.list_images(self.id, trial=trial)

    def png(self, image: ImageRef, trial: str | None = None) -> bytes:
        return self.client.store.get_image(self.id, image.name, image.epoch, trial)

    def checkpoints(self, trial: str | None = None) -> list[Checkpoint]:
        """Where the run (or one trial) saved checkpoints, oldest first."""
        return [entry for entry in self.client.store.checkpoints(self.id) if entry.trial == trial]

    def logs(self, tail: int = 200) -> list[str]:
        return self.client.store.logs(self.id, tail=tail)

    def log_length(self) -> int:
        """Lines ever logged, trimmed ones too: the cursor `logs_since` takes."""
        return self.client.store.log_length(self.id)

    def logs_since(self, seen: int) -> list[str]:
        """The lines logged after the first `seen`, for following a log."""
        return self.client.store.logs_since(self.id, seen)

    def cancel(self) -> JobStatus:
        """Cancel now when queued (returns CANCELLED), else ask the run to stop (RUNNING)."""
        return self.client.queue.cancel(self.id)

    def retry(self) -> None:
        self.client.queue.retry(self.id)

    def set_priority(self, priority: int) -> None:
        self.client.queue.set_priority(self.id, priority)

    def delete(self) -> Deleted:
        """Remove the finished job and all it left (see `Client.delete`)."""
        return self.client.delete(self.id)[0]

    def trials(self) -> list[Trial]:
        return [_trial(info) for info in self.client.store.trials(self.id)]

    def best_trial(self) -> Trial | None:
        """The trial the finished sweep chose on its val metric; None until it has finished."""
        record = self.record()
        if record.kind != "sweep":
            raise NotASweep(self.id, record.kind)
        best = record.result.get("best_trial")
        return next((trial for trial in self.trials() if trial.trial_id == best), None)


def _trial(info: dict[str, Any]) -> Trial:
    return Trial(
        trial_id=info["trial_id"],
        config=info.get("config", {}),
        status=info.get("status", ""),
        metric=info.get("metric"),
        test_metric=info.get("test_metric"),
    )
