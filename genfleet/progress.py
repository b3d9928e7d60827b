"""The bar `Job.wait` draws: tqdm's, which renders as a widget in Jupyter and as text in a
terminal (tqdm.auto picks), counting epochs of a run or finished trials of a sweep.

The bar is made on the first record read, when its total is known: tqdm's Jupyter widget
takes its length once, at creation.
"""

from __future__ import annotations

from types import TracebackType

from tqdm.auto import tqdm

from jobs.records import JobRecord, TrialStatus
from jobs.spec import JobSpec
from jobs.store import JobStore


class JobProgress:
    def __init__(self, job_id: str, enabled: bool) -> None:
        self.job_id = job_id
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.spec: JobSpec | None = None

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, record: JobRecord, store: JobStore) -> None:
        if self.spec is None:  # parsed once: the spec of a queued job never changes
            self.spec = record.job_spec()
        done, total, unit = position(self.spec, record, store)
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.job_id, unit=unit, disable=not self.enabled)
        self.bar.n = done
        self.bar.set_postfix_str(_postfix(record), refresh=False)
        self.bar.refresh()


def position(spec: JobSpec, record: JobRecord, store: JobStore) -> tuple[int, int, str]:
    """(done, total, unit): epochs of a run, finished trials of a sweep."""
    if spec.sweep is not None:
        trials = store.trials(record.id)
        done = sum(TrialStatus(trial["status"]).is_final for trial in trials if "status" in trial)
        return done, max(spec.sweep.trials, len(trials)), "trial"
    return int(record.progress.get("epoch", 0)), spec.train.epochs, "epoch"


def _postfix(record: JobRecord) -> str:
    bits = record.progress.get("val_bits_per_dim")
    shown = f" val {bits:.4f} bits/dim" if isinstance(bits, int | float) else ""
    return f"{record.status.value}{shown}"
