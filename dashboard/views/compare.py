"""Compare page: 2-4 jobs or sweep trials, curves overlaid and grids side by side at one epoch.

A run is a job id, or `<sweep id>/<trial id>` for a trial; `?runs=a,b/t1` preselects them.
"""

from __future__ import annotations

import streamlit as st

from dashboard import connection
from dashboard.charts import AXES, curve_keys, curves_figure, preferred_curve_key
from dashboard.images import DISPLAY_PX, epochs_by_name, sized_image
from dashboard.job_table import latest_bits_per_dim
from dashboard.session import refresh_every

RUNS_KEY = "compare.runs"
MAX_RUNS = 4
RECENT_JOBS = 100


def split_run(run: str) -> tuple[str, str | None]:
    job_id, _, trial = run.partition("/")
    return job_id, trial or None


def run_options() -> dict[str, str]:
    """Recent jobs, each sweep followed by its trials: run -> label."""
    store = connection.store()
    options: dict[str, str] = {}
    for record in store.list_jobs(limit=RECENT_JOBS).records:
        options[record.id] = f"{record.id} · {record.name}"
        if record.kind == "sweep":
            for trial in store.trials(record.id):
                run = f"{record.id}/{trial['trial_id']}"
                options[run] = f"{run} · {record.name} trial"
    return options


def chosen_runs() -> list[str]:
    options = run_options()
    if RUNS_KEY not in st.session_state:  # the first visit takes the URL's runs
        wanted = [run for run in st.query_params.get("runs", "").split(",") if run]
        st.session_state[RUNS_KEY] = wanted[:MAX_RUNS]
    for run in st.session_state[RUNS_KEY]:  # a run older than the recent jobs stays pickable
        options.setdefault(run, run)
    runs = st.multiselect(
        f"Jobs or trials to compare (2 to {MAX_RUNS})",
        list(options),
        format_func=options.get,
        max_selections=MAX_RUNS,
        key=RUNS_KEY,
    )
    st.query_params["runs"] = ",".join(runs)
    return runs


def final_numbers(rows: dict[str, list[dict]]) -> None:
    """Each run's latest val and test bits/dim side by side: test is what a paper reports."""
    table = []
    for run, run_rows in rows.items():
        val, test = latest_bits_per_dim(run_rows)
        epoch = run_rows[-1].get("epoch") if run_rows else None
        table.append({"run": run, "epoch": epoch, "val bits/dim": val, "test bits/dim": test})
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            name: st.column_config.NumberColumn(name, format="%.4f")
            for name in ("val bits/dim", "test bits/dim")
        },
        key="compare.numbers",
    )


def compared_curves(rows: dict[str, list[dict]]) -> None:
    keys = curve_keys([row for run_rows in rows.values() for row in run_rows])
    if not keys:
        st.info("None of these runs has reported metrics yet.")
        return
    axis, chosen = st.columns([1, 4])
    x_axis = axis.radio("Against", AXES, key="compare.x_axis", horizontal=True)
    picked = chosen.multiselect("Metrics", keys, default=[preferred_curve_key(keys)])
    st.plotly_chart(curves_figure(rows, picked, x_axis), key="compare.curves")


def side_by_side(runs: list[str]) -> None:
    refs = {run: connection.store().list_images(*split_run(run)) for run in runs}
    epochs = epochs_by_name([ref for run_refs in refs.values() for ref in run_refs])
    if not epochs:
        st.info("None of these runs has stored images yet.")
        return
    name_column, epoch_column = st.columns([1, 3])
    name = name_column.selectbox("Images", list(epochs), key="compare.image_name")
    stored = {run: {ref.epoch for ref in refs[run] if ref.name == name} for run in runs}
    shared = set.intersection(*stored.values())
    epoch = max(shared) if shared else epochs[name][-1]  # the latest epoch every run has
    if len(epochs[name]) > 1:
        epoch = epoch_column.select_slider("Epoch", epochs[name], value=epoch, key="compare.epoch")
    for column, run in zip(st.columns(len(runs)), runs, strict=True):
        job_id, trial = split_run(run)
        with column:
            if epoch in stored[run]:
                sized_image(
                    job_id, trial, name, epoch, DISPLAY_PX, f"{run} · {name} · epoch {epoch}"
                )
            else:
                st.caption(f"{run}: no {name} at epoch {epoch}")


@st.fragment(run_every=refresh_every())
def comparison(runs: list[str]) -> None:
    rows = {run: connection.store().metrics(*split_run(run)) for run in runs}
    st.subheader("Numbers")
    final_numbers(rows)
    st.subheader("Curves")
    compared_curves(rows)
    st.subheader("Images at the same epoch")
    side_by_side(runs)


st.title("Compare")
selected = chosen_runs()
if len(selected) < 2:
    st.info("Pick two to four jobs or trials.")
else:
    comparison(selected)
