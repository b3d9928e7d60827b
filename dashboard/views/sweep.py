"""Sweep page (`?job=<sweep id>`): trials ranked by the metric, best highlighted, every curve
overlaid, hyperparameters against the metric, why each stopped trial stopped."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import connection
from dashboard.charts import curves_figure, parallel_coordinates
from dashboard.links import JOB_PAGE, job_query
from dashboard.session import refresh_every
from dashboard.trials import metric_value, ranked, trial_rows
from jobs.records import JobNotFound, JobRecord, JobStatus
from jobs.spec import test_metric_of

BEST_ROW_STYLE = "background-color: rgba(46, 160, 67, 0.25); font-weight: 600"


def chosen_sweep() -> str | None:
    job_id = st.query_params.get("job")
    if job_id:
        return job_id
    sweeps = connection.store().list_jobs(kind="sweep", limit=50).records
    if not sweeps:
        st.info("No sweep jobs yet. Submit a spec with `kind: sweep` from the Submit page.")
        return None
    names = {record.id: f"{record.id} · {record.name} ({record.status.value})" for record in sweeps}
    picked = st.selectbox(
        "Sweep", list(names), format_func=names.get, index=None, placeholder="Pick a sweep"
    )
    if picked:
        st.query_params["job"] = picked
    return picked


def trial_table(record: JobRecord, trials: list[dict], metric: str) -> None:
    test_metric = test_metric_of(metric)
    rows = pd.DataFrame(trial_rows(record.id, trials, metric, test_metric))
    styled = rows.style.apply(
        lambda row: [BEST_ROW_STYLE if row["best"] else ""] * len(row), axis=1
    )
    st.dataframe(
        styled,
        hide_index=True,
        width="stretch",
        column_config={
            "trial": st.column_config.LinkColumn("trial", display_text=r"trial=([\w.-]+)"),
            **{
                name: st.column_config.NumberColumn(name, format="%.4f")
                for name in (metric, test_metric)
                if name is not None
            },
        },
        key="sweep.trials",
    )


def best_trial(record: JobRecord, best: dict, metric: str) -> None:
    test_metric, test_value = test_metric_of(metric), metric_value(best, "test_metric")
    tested = f", {test_metric} = {test_value:.4f}" if test_value is not None else ""
    st.success(f"Best trial `{best['trial_id']}`: {metric} = {metric_value(best):.4f}{tested}")
    st.json(best.get("config", {}))
    st.page_link(
        JOB_PAGE,
        label=f"Open trial {best['trial_id']}",
        query_params=job_query(record.id, best["trial_id"]),
    )


def sweep_view(job_id: str) -> None:
    try:
        record = connection.store().get(job_id)
    except JobNotFound:
        st.error(f"No job `{job_id}`.")
        return
    if record.kind != "sweep":
        st.warning(f"Job `{job_id}` is a {record.kind} job, not a sweep.")
        st.page_link(JOB_PAGE, label="Open it on the Job page", query_params=job_query(job_id))
        return
    sweep = record.spec["sweep"]
    metric, mode = sweep["metric"], sweep["mode"]
    st.title(record.name)
    st.caption(
        f"sweep `{record.id}` · {record.status.value} · {sweep['search']} search, "
        f"{sweep['scheduler']} scheduler · {mode} {metric} · {sweep['num_samples']} trials"
    )
    trials = ranked(connection.store().trials(job_id), mode)
    if not trials:
        st.info("No trials reported yet.")
        return
    trial_table(record, trials, metric)
    if metric_value(trials[0]) is not None:
        best_trial(record, trials[0], metric)
    st.subheader(f"{metric} of every trial")
    runs = {t["trial_id"]: connection.store().metrics(job_id, trial=t["trial_id"]) for t in trials}
    st.plotly_chart(curves_figure(runs, [metric]), key="sweep.curves")
    scored = [trial for trial in trials if metric_value(trial) is not None]
    if scored:
        st.subheader("Hyperparameters against the metric")
        figure = parallel_coordinates(
            [trial.get("config", {}) for trial in scored],
            [metric_value(trial) for trial in scored],
            metric,
            mode,
        )
        st.plotly_chart(figure, key="sweep.parallel")


def page() -> None:
    job_id = chosen_sweep()
    if job_id is None:
        st.title("Sweep")
        return
    try:
        status = connection.store().get(job_id).status
    except JobNotFound:
        st.error(f"No job `{job_id}`.")
        return
    active = status in (JobStatus.QUEUED, JobStatus.RUNNING)
    st.fragment(sweep_view, run_every=refresh_every() if active else None)(job_id)


page()
