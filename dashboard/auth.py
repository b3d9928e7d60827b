"""The login gate: with GENFLEET_DASHBOARD_PASSWORD set, nothing renders before the password."""

from __future__ import annotations

import hmac
import time
from typing import NoReturn

import streamlit as st

FAILED_LOGIN_DELAY_S = 1.0  # slows password guessing down to one try a second per session
LOGGED_IN_KEY = "logged_in"


def password_matches(entered: str, password: str) -> bool:
    # compare_digest takes as long for a near miss as for a far one: no timing oracle.
    return hmac.compare_digest(entered.encode("utf-8"), password.encode("utf-8"))


def is_logged_in(password: str | None) -> bool:
    return password is None or st.session_state.get(LOGGED_IN_KEY, False)


def login_form(password: str) -> NoReturn:
    """Ask for the password and end this run; a right one reruns the app logged in."""
    st.title("genfleet")
    with st.form("login"):
        entered = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        if password_matches(entered, password):
            st.session_state[LOGGED_IN_KEY] = True
            del st.session_state["login_password"]
            st.rerun()
        time.sleep(FAILED_LOGIN_DELAY_S)
        st.error("Wrong password.")
    st.stop()
