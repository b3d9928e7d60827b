"""Job records as table rows people read: ages, progress fractions, the latest bits/dim."""

from __future__ import annotations

from typing import Any

from dashboard.links import job_url
from jobs.records import JobRecord, JobStatus


def format_age(seconds: float) -> str:
    """ "42 s", "7 min", "3 h", "12 d": one unit, enough to scan a column."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(int(seconds), 0)} s"


def progress_fraction(record: JobRecord) -> float | None:
    """Epochs done over epochs asked for; the spec's epochs when the metrics do not say."""
    if record.status is JobStatus.SUCCEEDED:
        return 1.0
    epoch = record.progress.get("epoch")
    epochs = record.progress.get("epochs") or record.spec.get("train", {}).get("epochs")
    if not isinstance(epoch, int | float) or not isinstance(epochs, int | float) or epochs <= 0:
        return None
    return min(epoch / epochs, 1.0)


def bits_per_dim(record: JobRecord) -> tuple[float | None, float | None]:
    """Val and test bits/dim: a run's latest, a sweep's best trial's (chosen on val)."""
    if record.kind == "sweep":
        result = record.result
        if result.get("metric") != "val_bits_per_dim":
            return None, None
        return result.get("best_metric"), result.get("best_test_metric")
    return record.progress.get("val_bits_per_dim"), record.progress.get("test_bits_per_dim")


def latest_bits_per_dim(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The last val and test bits/dim in a run's metric rows (test comes after the last epoch)."""
    latest: list[float | None] = [None, None]
    for row in rows:
        for index, key in enumerate(("val_bits_per_dim", "test_bits_per_dim")):
            if isinstance(row.get(key), int | float):
                latest[index] = row[key]
    return latest[0], latest[1]


def job_row(record: JobRecord, now: float) -> dict[str, Any]:
    return {
        "id": job_url(record.id),
        "name": record.name,
        "model": record.model_type,
        "kind": record.kind,
        "status": record.status.value,
        "priority": record.priority,
        "attempts": f"{record.attempts}/{record.max_attempts}",
        "progress": progress_fraction(record),
        **dict(zip(("val bits/dim", "test bits/dim"), bits_per_dim(record), strict=True)),
        "age": format_age(now - record.created_at),
        "why waiting": record.pending_reason if record.status is JobStatus.QUEUED else "",
    }
