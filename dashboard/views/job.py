"""Job page: one job or sweep trial (`?job=<id>[&trial=<t>]`): status, curves, images, logs,
and, for a finished job, a delete that asks first."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import streamlit as st
import yaml

from dashboard import connection, deleting
from dashboard.charts import AXES, curve_keys, curves_figure, default_curve_keys
from dashboard.images import gallery
from dashboard.job_table import bits_per_dim, format_age, latest_bits_per_dim, progress_fraction
from dashboard.links import JOBS_PAGE, SUBMIT_PAGE, SWEEP_PAGE, job_query
from dashboard.session import refresh_every
from jobs.keys import MAX_INTERRUPTIONS
from jobs.records import JobNotFound, JobRecord, JobStatus

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
LOG_TAIL = 200


def chosen_job() -> tuple[str, str | None] | None:
    """The job in the URL, or one the user picks (then put in the URL, so reloads keep it)."""
    job_id = st.query_params.get("job")
    if job_id:
        return job_id, st.query_params.get("trial")
    recent = connection.store().list_jobs(limit=50).records
    names = {record.id: f"{record.id} · {record.name} ({record.status.value})" for record in recent}
    picked = st.selectbox(
        "Job", list(names), format_func=names.get, index=None, placeholder="Pick a recent job"
    )
    typed = st.text_input("or a job id")
    if picked or typed:
        st.query_params["job"] = picked or typed.strip()
        return st.query_params["job"], None
    return None


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    stamp = datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({format_age(time.time() - timestamp)} ago)"


def header(record: JobRecord, trial: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
    """`rows`: the trial's metric rows when `trial` is given (its bits/dim come from them)."""
    if trial is None:
        st.title(record.name)
        st.caption(f"job `{record.id}` · {record.kind} · {record.model_type} on {record.dataset}")
    else:
        st.title(f"{record.name} · trial {trial['trial_id']}")
        st.caption(f"trial of sweep job `{record.id}`")
        st.page_link(SWEEP_PAGE, label="Back to the sweep", query_params=job_query(record.id))
    status, attempts, priority, progress, val_bits, test_bits = st.columns(6)
    shown_status = trial.get("status", "-") if trial else record.status.value
    status.metric("Status", shown_status)
    attempts.metric(
        "Attempts",
        f"{record.attempts}/{record.max_attempts}",
        help=f"Failures of the run use attempts. Interruptions (a dispatcher or node lost): "
        f"{record.interruptions} of {MAX_INTERRUPTIONS}.",
    )
    priority.metric("Priority", record.priority)
    fraction = progress_fraction(record)
    progress.metric("Progress", "-" if fraction is None else f"{fraction:.0%}")
    if trial is None:
        val, test = bits_per_dim(record)
    else:
        val, test = latest_bits_per_dim(rows)
    best = "Best trial's " if record.kind == "sweep" and trial is None else ""
    for column, label, value in ((val_bits, "val", val), (test_bits, "test", test)):
        column.metric(
            f"{best}{label} bits/dim".capitalize(), "-" if value is None else f"{value:.4f}"
        )
    st.caption(
        f"created {when(record.created_at)} · started {when(record.started_at)} · "
        f"finished {when(record.finished_at)}"
    )
    if record.status is JobStatus.QUEUED and record.pending_reason:
        st.info(f"Waiting: {record.pending_reason}")
    if record.cancel_requested and record.status is JobStatus.RUNNING:
        st.warning("Cancel requested: the dispatcher stops this job at its next check.")
    if record.last_error:
        st.error(f"Last error: {record.last_error}")
        if record.last_traceback:
            with st.expander("Traceback"):
                st.code(record.last_traceback, language="text")
    if record.kind == "sweep" and trial is None:
        st.page_link(SWEEP_PAGE, label="Open the sweep's trials", query_params=job_query(record.id))
    if trial is not None:
        stop_reason = trial.get("reason")
        st.caption(
            f"config: {trial.get('config', {})}"
            + (f" · stopped: {stop_reason}" if stop_reason else "")
        )


def curves(job_id: str, trial: str | None, rows: list[dict[str, Any]]) -> None:
    keys = curve_keys(rows)
    if not keys:
        st.info("No metrics yet: the first row arrives after the first epoch.")
        return
    selected_key = f"job.curves.{job_id}.{trial}"
    st.session_state.setdefault(selected_key, default_curve_keys(keys))
    axis, chosen = st.columns([1, 4])
    x_axis = axis.radio("Against", AXES, key="job.x_axis", horizontal=True)
    picked = chosen.multiselect("Metrics", keys, key=selected_key)
    st.plotly_chart(curves_figure({job_id: rows}, picked, x_axis), key="job.curves_chart")


def events_table(job_id: str) -> None:
    events = connection.store().events(job_id)
    st.dataframe(
        [
            {
                "time": datetime.fromtimestamp(event.ts).strftime("%Y-%m-%d %H:%M:%S"),
                "status": event.status.value,
                "message": event.message,
                "dispatcher": event.dispatcher_id,
            }
            for event in events
        ],
        hide_index=True,
        width="stretch",
    )


def checkpoints_table(job_id: str, trial: str | None) -> None:
    checkpoints = [c for c in connection.store().checkpoints(job_id) if c.trial == trial]
    if not checkpoints:
        st.caption("No checkpoints yet.")
        return
    st.dataframe(
        [{"epoch": c.epoch, "uri": c.uri} for c in checkpoints], hide_index=True, width="stretch"
    )


def details(record: JobRecord, trial: str | None) -> None:
    events, checkpoints, logs, spec = st.tabs(["Events", "Checkpoints", "Logs", "Spec"])
    with events:
        events_table(record.id)
    with checkpoints:
        checkpoints_table(record.id, trial)
    with logs:
        lines = connection.store().logs(record.id, tail=LOG_TAIL)
        st.code("\n".join(lines) or "(no log lines yet)", language="text")
    with spec:
        st.code(yaml.safe_dump(record.spec, sort_keys=False), language="yaml")
        st.page_link(SUBMIT_PAGE, label="Clone into a new job", query_params={"clone": record.id})


def delete_control(record: JobRecord) -> None:
    """Delete a finished job, then go to the Jobs page, which says what was removed."""
    if not record.status.is_final:
        st.caption(f"To delete this job, cancel it first: it is {record.status.value}.")
        return
    question = (
        f"Delete job `{record.id}` ({record.name}) with its metrics, images, logs, trials and "
        "its folders in the runs' storage? This cannot be undone."
    )
    key = f"job.delete.{record.id}"
    if deleting.confirmed(key, "Delete job", question) and deleting.delete([record.id]):
        st.switch_page(JOBS_PAGE)
    deleting.show_report()  # why a delete was refused


def job_view(job_id: str, trial_id: str | None, shown_status: JobStatus) -> None:
    try:
        record = connection.store().get(job_id)
    except JobNotFound:
        st.error(f"No job `{job_id}`.")
        return
    if record.status is not shown_status:  # finished (or restarted): redraw with the new pace
        st.rerun()
    trial = None
    if trial_id is not None:
        trial = next(
            (t for t in connection.store().trials(job_id) if t["trial_id"] == trial_id), None
        )
        if trial is None:
            st.error(f"Sweep job `{job_id}` has no trial `{trial_id}`.")
            return
    # A sweep reports no curves of its own: its page shows its best trial's.
    shown = trial_id or (record.result.get("best_trial") if record.kind == "sweep" else None)
    rows = connection.store().metrics(job_id, trial=shown)  # read once for header and curves
    header(record, trial, rows)
    st.subheader("Curves" if shown == trial_id else f"Curves of the best trial, {shown}")
    curves(job_id, shown, rows)
    st.subheader("Images" if shown == trial_id else f"Images of the best trial, {shown}")
    gallery(job_id, shown, connection.store().list_images(job_id, trial=shown), "job")
    details(record, trial_id)
    if trial is None:  # a trial goes with its sweep
        delete_control(record)


def page() -> None:
    chosen = chosen_job()
    if chosen is None:
        st.title("Job")
        return
    job_id, trial_id = chosen
    try:
        status = connection.store().get(job_id).status
    except JobNotFound:
        st.title("Job")
        st.error(f"No job `{job_id}`.")
        return
    # Live while the job can still change; a finished job is drawn once.
    live = st.fragment(job_view, run_every=refresh_every() if status in ACTIVE else None)
    live(job_id, trial_id, status)


page()
