"""The dashboard's one Redis client, and the store and queue every page goes through."""

from __future__ import annotations

import redis
import streamlit as st

from jobs.queue import JobQueue
from jobs.redis_server import connect
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.store import JobStore


@st.cache_resource(show_spinner=False)
def _client(settings: Settings) -> redis.Redis:
    # Cached by the settings' values, so a changed GENFLEET_REDIS_URL gets its own client; a
    # client pools connections and is thread-safe, so every browser session shares it.
    return connect(settings)


@st.cache_resource(show_spinner=False)
def _storage(root: str) -> RunStorage:
    # One per root, so its read cache serves every rerun and every browser session.
    return RunStorage(root)


def store() -> JobStore:
    settings = Settings.from_env()
    return JobStore(_client(settings), settings.prefix, _storage(settings.storage))


def queue() -> JobQueue:
    settings = Settings.from_env()
    return JobQueue(_client(settings), settings.prefix)


def data_source() -> str:
    """Which Redis and prefix the pages read, to key caches of what they read."""
    settings = Settings.from_env()
    return f"{settings.redis_url or settings.home}|{settings.prefix}"
