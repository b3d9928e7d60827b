"""Plotly figures: training curves (one run or many overlaid) and sweep parallel coordinates."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

AXES = ("epoch", "step")
# Test is one point after the last epoch (or every `test_every`), drawn beside the curves.
BITS_PER_DIM = ("train_bits_per_dim", "val_bits_per_dim", "test_bits_per_dim")
NOT_CURVES = {*AXES, "lr", "images_per_s", "time", "timestamp"}


def curve_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every metric with a number in some row, in first-seen order (the loop's own order)."""
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in NOT_CURVES and _is_number(value):
                keys[key] = None
    return list(keys)


def default_curve_keys(keys: list[str]) -> list[str]:
    """Bits/dim when the model has a likelihood; else the model's own losses."""
    likelihood = [key for key in BITS_PER_DIM if key in keys]
    if likelihood:
        return likelihood
    losses = [key for key in keys if key.endswith(("loss", "_nats"))]
    return losses or keys[:2]


def preferred_curve_key(keys: list[str]) -> str:
    """The one metric to compare runs by: validation over training when both exist."""
    defaults = default_curve_keys(keys)
    return next((key for key in defaults if key.startswith("val_")), defaults[0])


def curves_figure(
    runs: dict[str, list[dict[str, Any]]], keys: list[str], x_axis: str = "epoch"
) -> go.Figure:
    """One line per (run, metric) against epoch or step; hover shows every line at that x."""
    figure = go.Figure()
    for run, rows in runs.items():
        for key in keys:
            points = [
                (row[x_axis], row[key])
                for row in rows
                if _is_number(row.get(x_axis)) and _is_number(row.get(key))
            ]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            label = key if len(runs) == 1 else f"{run} · {key}"
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label))
    figure.update_layout(
        hovermode="x unified" if len(runs) * len(keys) <= 8 else "closest",
        xaxis_title=x_axis,
        yaxis_title=keys[0] if len(keys) == 1 else "value",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        height=380,
        legend={"orientation": "h", "y": -0.2},
    )
    if x_axis == "epoch":  # whole epochs only: "epoch 2.5" is no point a run reports
        figure.update_xaxes(tickformat="d", dtick=max(1, _longest(runs, x_axis) // 10))
    return figure


def _longest(runs: dict[str, list[dict[str, Any]]], x_axis: str) -> int:
    values = [row[x_axis] for rows in runs.values() for row in rows if _is_number(row.get(x_axis))]
    return int(max(values, default=1))


def parallel_coordinates(
    configs: list[dict[str, Any]], metric_values: list[float], metric: str, mode: str
) -> go.Figure:
    """One axis per hyperparameter and one for the metric; lines coloured by the metric."""
    dimensions = [
        _dimension(name, [config.get(name) for config in configs])
        for name in _config_names(configs)
    ]
    dimensions.append({"label": metric, "values": metric_values})
    # The best trial is the brightest line whichever way the metric points.
    colorscale = "Viridis" if mode == "max" else "Viridis_r"
    figure = go.Figure(
        go.Parcoords(
            line={"color": metric_values, "colorscale": colorscale, "showscale": True},
            dimensions=dimensions,
        )
    )
    figure.update_layout(margin={"l": 60, "r": 60, "t": 50, "b": 20}, height=400)
    return figure


def _config_names(configs: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for config in configs:
        names.update(dict.fromkeys(config))
    return list(names)


def _dimension(name: str, values: list[Any]) -> dict[str, Any]:
    if all(_is_number(value) for value in values):
        if _spans_decades(values):  # loguniform ranges read better on a log axis
            return {"label": f"log10({name})", "values": [math.log10(v) for v in values]}
        return {"label": name, "values": values}
    categories = sorted({str(value) for value in values})
    return {
        "label": name,
        "values": [categories.index(str(value)) for value in values],
        "tickvals": list(range(len(categories))),
        "ticktext": categories,
    }


def _spans_decades(values: list[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= 100


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
