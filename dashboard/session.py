"""Per-browser-session behaviour shared by every page: live refresh and remembered choices."""

from __future__ import annotations

import streamlit as st

REFRESH_SECONDS = 5.0
LIVE_KEY = "live"

# Choices a user makes on one page and expects to find again after visiting another.
REMEMBERED_KEYS = (
    LIVE_KEY,
    "jobs.status",
    "jobs.model",
    "jobs.kind",
    "jobs.page_size",
    "submit.text",
    "job.x_axis",
    "compare.runs",
    "compare.x_axis",
)


def keep_widget_state() -> None:
    """Streamlit drops a widget's value once a run does not draw it (the user is on another
    page); assigning it back marks it as the user's, which Streamlit keeps."""
    for key in REMEMBERED_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def refresh_every() -> float | None:
    """Seconds between reruns of a page's live parts; None once the user pauses updates."""
    return REFRESH_SECONDS if st.session_state.get(LIVE_KEY, True) else None
