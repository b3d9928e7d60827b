"""Deleting finished jobs from the Job and Jobs pages: ask, then delete through jobs/deletion.py.

The first click only asks; a second, explicit click deletes, so one stray click never removes
a job's records and its folders in the runs' storage. The question is a two-step button kept
in session_state rather than st.dialog, so AppTest drives it like any other button. A delete
ends in a rerun (Jobs) or a switch to the Jobs page (Job), so what happened is kept in
session_state for `show_report` to draw in the run after.
"""

from __future__ import annotations

import streamlit as st

from dashboard import connection
from jobs.deletion import Deleted, NotDeletable, delete_jobs
from jobs.records import JobNotFound

REPORT_KEY = "deleting.report"


def _ask(key: str, asking: bool) -> None:
    st.session_state[key] = asking


def confirmed(key: str, label: str, question: str, disabled: bool = False) -> bool:
    """A `label` button that asks `question` first: True in the run where the user confirms.
    Widget keys: `<key>.ask`, then `<key>.confirm` and `<key>.keep`."""
    if disabled or not st.session_state.get(key):
        st.button(label, key=f"{key}.ask", on_click=_ask, args=(key, True), disabled=disabled)
        return False
    st.warning(question)
    confirm, keep = st.columns(2)
    keep.button("Keep", key=f"{key}.keep", on_click=_ask, args=(key, False), width="stretch")
    if confirm.button("Delete", key=f"{key}.confirm", type="primary", width="stretch"):
        st.session_state[key] = False
        return True
    return False


def removed(deleted: Deleted) -> str:
    trials = f" with its {len(deleted.trials)} trials" if deleted.trials else ""
    folders = ", ".join(f"`{folder}`" for folder in deleted.folders) or "nothing"
    return f"Deleted job {deleted.job_id}{trials}; removed {folders} from the runs' storage."


def delete(job_ids: list[str]) -> bool:
    """Delete the jobs (jobs/deletion.py checks every one first and deletes none if one is
    unknown or unfinished) and keep what happened for `show_report`; True when some went."""
    try:
        deleted = delete_jobs(connection.store(), job_ids)
    except NotDeletable as exc:  # a job retried after the check: the others went
        report = [("ok", removed(entry)) for entry in exc.deleted]
        prefix = "" if exc.deleted else "Nothing deleted: "
        st.session_state[REPORT_KEY] = [*report, ("error", f"{prefix}{exc}")]
        return bool(exc.deleted)
    except JobNotFound as exc:
        st.session_state[REPORT_KEY] = [("error", f"Nothing deleted: {exc}")]
        return False
    except OSError as exc:  # the runs' storage: the keys are gone, a later delete or gc ends it
        st.session_state[REPORT_KEY] = [("error", f"Deleted from Redis, not from storage: {exc}")]
        return True
    st.session_state[REPORT_KEY] = [("ok", removed(entry)) for entry in deleted]
    return True


def show_report() -> None:
    for outcome, message in st.session_state.pop(REPORT_KEY, []):
        (st.success if outcome == "ok" else st.error)(message)
