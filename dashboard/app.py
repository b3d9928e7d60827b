"""The genfleet dashboard: `genfleet dashboard` runs `streamlit run dashboard/app.py`.

Every page reads and writes through `jobs/` (the store and the queue), never Ray or torch, so
the dashboard runs anywhere Redis is reachable.
"""

from __future__ import annotations

import streamlit as st

from dashboard.auth import is_logged_in, login_form
from dashboard.links import (
    CLUSTER_PAGE,
    COMPARE_PAGE,
    JOB_PAGE,
    JOBS_PAGE,
    SUBMIT_PAGE,
    SWEEP_PAGE,
)
from dashboard.session import LIVE_KEY, REFRESH_SECONDS, keep_widget_state
from jobs.settings import Settings

PAGES = [
    st.Page(JOBS_PAGE, title="Jobs", icon=":material/list:", default=True),
    st.Page(SUBMIT_PAGE, title="Submit", icon=":material/add_circle:"),
    st.Page(JOB_PAGE, title="Job", icon=":material/monitoring:"),
    st.Page(SWEEP_PAGE, title="Sweep", icon=":material/tune:"),
    st.Page(COMPARE_PAGE, title="Compare", icon=":material/compare:"),
    st.Page(CLUSTER_PAGE, title="Cluster", icon=":material/dns:"),
]

st.set_page_config(page_title="genfleet", page_icon=":material/grid_view:", layout="wide")
password = Settings.from_env().dashboard_password
logged_in = is_logged_in(password)
# Navigation runs before the login form, hidden, so a link to /job?job=... still opens that
# job once the password is in.
current = st.navigation(PAGES, position="sidebar" if logged_in else "hidden")
if not logged_in:
    login_form(password)
keep_widget_state()
st.session_state.setdefault(LIVE_KEY, True)
st.sidebar.toggle("Live updates", key=LIVE_KEY, help=f"Refresh every {REFRESH_SECONDS:g} s")
current.run()
