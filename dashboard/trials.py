"""Sweep trials ranked by the sweep's metric, as the Sweep page lists them.

A trial's info is what the dispatcher stores with `JobStore.put_trial`: `config` (dotted spec
path -> value), `status`, `metric` (the sweep metric's latest value, or None), `test_metric`
(its test split counterpart, reported after the last epoch, or None), `reason` (why the
scheduler stopped it, or None) and `iterations` (epochs reported); see cluster/sweep.py.
"""

from __future__ import annotations

import math
from typing import Any

from dashboard.links import job_url


def metric_value(trial: dict[str, Any], key: str = "metric") -> float | None:
    value = trial.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def ranked(trials: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Best first; trials without a metric value yet go last, in trial order."""
    sign = -1.0 if mode == "max" else 1.0
    scored = [trial for trial in trials if metric_value(trial) is not None]
    unscored = [trial for trial in trials if metric_value(trial) is None]
    return sorted(scored, key=lambda trial: sign * metric_value(trial)) + unscored


def trial_rows(
    job_id: str, trials: list[dict[str, Any]], metric: str, test_metric: str | None
) -> list[dict[str, Any]]:
    """Table rows in the order given; the first scored trial is marked best. Ranked on the
    val metric; the test column is what the chosen trial reports."""
    best_id = next((t["trial_id"] for t in trials if metric_value(t) is not None), None)
    return [
        {
            "best": "★" if trial["trial_id"] == best_id else "",
            "trial": job_url(job_id, trial["trial_id"]),
            "status": trial.get("status"),
            metric: metric_value(trial),
            **({test_metric: metric_value(trial, "test_metric")} if test_metric else {}),
            "iterations": trial.get("iterations"),
            "stopped because": trial.get("reason"),
            **{key: _cell(value) for key, value in trial.get("config", {}).items()},
        }
        for trial in trials
    ]


def _cell(value: Any) -> Any:
    # A column of a table holds one type; lists (a grid of layer sizes) become text.
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
