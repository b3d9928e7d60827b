"""A job store and queue on the test's empty Redis database, with storage in its tmp_path
(pytest plugin). A module that needs another prefix or storage defines its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from jobs.queue import JobQueue
from jobs.run_storage import RunStorage
from jobs.store import JobStore


@pytest.fixture
def store(redis_client: redis.Redis, tmp_path: Path) -> JobStore:
    return JobStore(redis_client, storage=RunStorage(str(tmp_path / "storage")))


@pytest.fixture
def queue(redis_client: redis.Redis) -> JobQueue:
    return JobQueue(redis_client)
