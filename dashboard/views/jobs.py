"""Jobs page: every job, filtered and paged by the store, with cancel, retry, priority and a
delete of the selected finished jobs that asks first."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import streamlit as st

from dashboard import connection, deleting
from dashboard.job_table import job_row
from dashboard.links import JOB_PAGE, job_query
from dashboard.session import refresh_every
from jobs.model_params import PARAMS_BY_MODEL
from jobs.records import InvalidTransition, JobNotFound, JobStatus
from jobs.scheduling import sent_demand

ANY = "any"
PAGE_SIZES = (25, 50, 100)
DEFAULT_PAGE_SIZE = 50
PAGE_SIZE_KEY = "jobs.page_size"
PAGE_KEY = "jobs.page"
SELECTED_KEY = "jobs.selected"
FEEDBACK_KEY = "jobs.feedback"


def _first_page() -> None:
    st.session_state[PAGE_KEY] = 0


def _turn_page(step: int) -> None:
    st.session_state[PAGE_KEY] = max(st.session_state.get(PAGE_KEY, 0) + step, 0)


def _act(action: Callable[[str], str]) -> None:
    """Apply one action to every selected job; say what happened to each."""
    feedback = []
    for job_id in st.session_state.get(SELECTED_KEY, []):
        try:
            feedback.append(("ok", action(job_id)))
        except (InvalidTransition, JobNotFound, ValueError) as exc:
            feedback.append(("error", str(exc)))
    st.session_state[FEEDBACK_KEY] = feedback


def _cancel() -> None:
    queue = connection.queue()

    def cancel(job_id: str) -> str:
        if queue.cancel(job_id) is JobStatus.RUNNING:
            return f"{job_id}: cancel requested; it ends cancelled at the dispatcher's next check"
        return f"{job_id}: cancelled"

    _act(cancel)


def _retry() -> None:
    queue = connection.queue()

    def retry(job_id: str) -> str:
        queue.retry(job_id)
        return f"{job_id}: queued again"

    _act(retry)


def _reprioritise() -> None:
    priority = st.session_state["jobs.new_priority"]
    queue = connection.queue()

    def reprioritise(job_id: str) -> str:
        queue.set_priority(job_id, priority)
        return f"{job_id}: priority {priority}"

    _act(reprioritise)


def filters() -> tuple[str | None, str | None, str | None]:
    counts = connection.store().counts_by_status()
    status_column, model_column, kind_column, size_column = st.columns(4)
    chosen_status = status_column.selectbox(
        "Status",
        [ANY, *(status.value for status in JobStatus)],
        format_func=lambda value: value if value == ANY else f"{value} ({counts[value]})",
        key="jobs.status",
        on_change=_first_page,
    )
    chosen_model = model_column.selectbox(
        "Model", [ANY, *PARAMS_BY_MODEL], key="jobs.model", on_change=_first_page
    )
    chosen_kind = kind_column.selectbox(
        "Kind", [ANY, "train", "sweep"], key="jobs.kind", on_change=_first_page
    )
    st.session_state.setdefault(PAGE_SIZE_KEY, DEFAULT_PAGE_SIZE)
    size_column.selectbox("Rows per page", PAGE_SIZES, key=PAGE_SIZE_KEY, on_change=_first_page)
    return tuple(
        None if value == ANY else value for value in (chosen_status, chosen_model, chosen_kind)
    )


def show_feedback() -> None:
    for outcome, message in st.session_state.pop(FEEDBACK_KEY, []):
        (st.success if outcome == "ok" else st.warning)(message)


def actions(job_ids: list[str], names: dict[str, str]) -> None:
    # Keep only selections still on this page, or the multiselect rejects its own value.
    st.session_state[SELECTED_KEY] = [
        job_id for job_id in st.session_state.get(SELECTED_KEY, []) if job_id in job_ids
    ]
    st.multiselect(
        "Jobs to act on",
        job_ids,
        format_func=lambda job_id: f"{job_id} · {names[job_id]}",
        key=SELECTED_KEY,
    )
    cancel, retry, priority, reprioritise = st.columns(4, vertical_alignment="bottom")
    cancel.button("Cancel", on_click=_cancel, width="stretch")
    retry.button("Retry", on_click=_retry, width="stretch")
    priority.number_input("New priority", 0, 9, 5, key="jobs.new_priority")
    reprioritise.button("Set priority", on_click=_reprioritise, width="stretch")
    selected = st.session_state[SELECTED_KEY]
    listed = ", ".join(f"`{job_id}` ({names[job_id]})" for job_id in selected)
    question = (
        f"Delete {listed} with their metrics, images, logs, trials and their folders in the "
        "runs' storage? This cannot be undone."
    )
    if deleting.confirmed("jobs.delete", "Delete selected", question, disabled=not selected):
        deleting.delete(selected)
        st.rerun()  # the table above still lists them
    show_feedback()
    deleting.show_report()
    for job_id in selected:
        st.page_link(
            JOB_PAGE, label=f"Open {job_id} · {names[job_id]}", query_params=job_query(job_id)
        )


@st.fragment(run_every=refresh_every())
def job_table() -> None:
    status, model, kind = filters()
    size = st.session_state[PAGE_SIZE_KEY]
    page_index = st.session_state.setdefault(PAGE_KEY, 0)
    page = connection.store().list_jobs(
        status=status, model=model, kind=kind, offset=page_index * size, limit=size
    )
    pages = max(math.ceil(page.total / size), 1)
    if page_index >= pages:  # jobs went away under a later page
        st.session_state[PAGE_KEY] = page_index = pages - 1
        page = connection.store().list_jobs(status, model, kind, page_index * size, size)
    now = time.time()
    demand = sent_demand(connection.store().cluster_status())
    if demand is not None and demand.bundles:
        st.caption(f"Asked of Ray's autoscaler for the waiting jobs: {demand.describe()}.")
    st.dataframe(
        [job_row(record, now) for record in page.records],
        hide_index=True,
        width="stretch",
        column_config={
            "id": st.column_config.LinkColumn("id", display_text=r"job\?job=(\w+)"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
            "val bits/dim": st.column_config.NumberColumn("val bits/dim", format="%.4f"),
            "test bits/dim": st.column_config.NumberColumn("test bits/dim", format="%.4f"),
        },
    )
    previous, where, following = st.columns([1, 3, 1], vertical_alignment="center")
    previous.button("Previous", on_click=_turn_page, args=(-1,), disabled=page_index == 0)
    where.caption(f"Page {page_index + 1} of {pages} · {page.total} jobs")
    following.button("Next", on_click=_turn_page, args=(1,), disabled=page_index + 1 >= pages)
    actions([record.id for record in page.records], {r.id: r.name for r in page.records})


st.title("Jobs")
job_table()
