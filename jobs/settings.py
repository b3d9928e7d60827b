"""Every environment variable genfleet reads, in one place, with its default."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from jobs.limits import LimitError

ENVIRONMENT = {
    "GENFLEET_HOME": "data dir: embedded Redis, its password, local Ray results (~/.genfleet)",
    "GENFLEET_REDIS_URL": "Redis to use (redis:// or rediss://); unset starts an embedded one",
    "GENFLEET_PREFIX": "prefix of every Redis key genfleet writes (genfleet)",
    "GENFLEET_RAY_ADDRESS": "Ray cluster to join (ray://... or host:port); unset starts local Ray",
    "GENFLEET_STORAGE": "checkpoints and Ray results: a shared path or s3:// URI ($HOME/storage)",
    "GENFLEET_DATA_DIR": "datasets live under this folder ($HOME/data)",
    "GENFLEET_DASHBOARD_ADDRESS": "dashboard bind address (127.0.0.1)",
    "GENFLEET_DASHBOARD_PORT": "dashboard port (8501)",
    "GENFLEET_DASHBOARD_PASSWORD": "dashboard login password; required beyond loopback",
    "GENFLEET_MAX_SPEC_BYTES": "largest accepted spec (65536)",
    "GENFLEET_MAX_EPOCHS": "most epochs one spec may ask for (10000)",
    "GENFLEET_MAX_SAMPLES": "most samples per grid (1024)",
    "GENFLEET_MAX_WORKERS": "most Ray Train workers one spec may ask for (256)",
    "GENFLEET_MAX_CLUSTER": "largest the Ray cluster may grow to (unset: unbounded), e.g. "
    "cpus=64,gpus=8,node_cpus=16,node_gpus=2: a job beyond it fails, the others wait for nodes",
    "GENFLEET_REDIS_MAXMEMORY": "memory cap of the embedded Redis (1gb); full, it refuses writes",
    "GENFLEET_RETENTION_DAYS": "delete finished jobs older than this many days (unset: keep forever)",
}
# Redis's own memory notation (redis.conf): k, m, g are powers of 1000, kb, mb, gb of 1024.
REDIS_MEMORY = re.compile(r"(\d+)(b|k|kb|m|mb|g|gb)?")
DEFAULT_REDIS_MAXMEMORY = "1gb"
DEFAULT_DASHBOARD_PORT = 8501


@dataclass(frozen=True)
class MaxCluster:
    """GENFLEET_MAX_CLUSTER: the most CPUs and GPUs the cluster may ever have, in all and on one
    node. Only a job beyond it can never run; one beyond the cluster of the moment waits, since
    nodes may join (an autoscaler scaling up from zero, a GPU node restarting). None: no bound.
    """

    cpus: float | None = None
    gpus: float | None = None
    node_cpus: float | None = None
    node_gpus: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxCluster:
        """`cpus=64,gpus=8,node_cpus=16,node_gpus=2`, any subset; "" bounds nothing."""
        keys = [field.name for field in fields(cls)]
        bounds: dict[str, float] = {}
        for pair in filter(None, (part.strip() for part in text.split(","))):
            key, equals, value = (part.strip() for part in pair.partition("="))
            if not equals or key not in keys:
                raise LimitError(
                    f"GENFLEET_MAX_CLUSTER: expected key=number pairs with keys "
                    f"{', '.join(keys)}, got {pair!r}"
                )
            if key in bounds:
                raise LimitError(f"GENFLEET_MAX_CLUSTER: {key} given twice in {text!r}")
            bounds[key] = _bound(key, value)
        return cls(**bounds)

    def as_text(self) -> str:
        """The variable's value that gives these bounds ("" when there are none)."""
        bounds = ((field.name, getattr(self, field.name)) for field in fields(self))
        return ",".join(f"{key}={value:g}" for key, value in bounds if value is not None)


def _bound(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise LimitError(f"GENFLEET_MAX_CLUSTER: {key} must be a number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Settings:
    home: Path
    redis_url: str | None
    prefix: str
    ray_address: str | None
    storage: str
    data_dir: Path
    dashboard_address: str
    dashboard_port: int
    dashboard_password: str | None
    max_cluster: MaxCluster = MaxCluster()
    redis_maxmemory: str = DEFAULT_REDIS_MAXMEMORY
    retention_days: float | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        home = Path(env.get("GENFLEET_HOME", Path.home() / ".genfleet")).expanduser()
        return cls(
            home=home,
            redis_url=env.get("GENFLEET_REDIS_URL") or None,
            prefix=env.get("GENFLEET_PREFIX", "genfleet"),
            ray_address=env.get("GENFLEET_RAY_ADDRESS") or None,
            storage=env.get("GENFLEET_STORAGE", str(home / "storage")),
            data_dir=Path(env.get("GENFLEET_DATA_DIR", home / "data")).expanduser(),
            dashboard_address=env.get("GENFLEET_DASHBOARD_ADDRESS", "127.0.0.1"),
            dashboard_port=_dashboard_port(env.get("GENFLEET_DASHBOARD_PORT", "")),
            dashboard_password=env.get("GENFLEET_DASHBOARD_PASSWORD") or None,
            max_cluster=MaxCluster.parse(env.get("GENFLEET_MAX_CLUSTER", "")),
            redis_maxmemory=_redis_maxmemory(env.get("GENFLEET_REDIS_MAXMEMORY", "")),
            retention_days=_retention_days(env.get("GENFLEET_RETENTION_DAYS", "")),
        )


def _redis_maxmemory(text: str) -> str:
    """`512MB` -> `512mb`; "" is the default. Checked here, since a value redis-server rejects
    would only show in its log, as an embedded server that does not start."""
    if not text:
        return DEFAULT_REDIS_MAXMEMORY
    match = REDIS_MEMORY.fullmatch(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise LimitError(
            f"GENFLEET_REDIS_MAXMEMORY: must be a size > 0 such as 512mb or 1gb "
            f"(units b, k, kb, m, mb, g, gb), got {text!r}"
        )
    return f"{int(match[1])}{match[2] or ''}"


def _dashboard_port(text: str) -> int:
    if not text:
        return DEFAULT_DASHBOARD_PORT
    port = int(text) if text.strip().isdigit() else 0
    if not 1 <= port <= 65535:
        raise LimitError(f"GENFLEET_DASHBOARD_PORT: must be a port from 1 to 65535, got {text!r}")
    return port


def _retention_days(text: str) -> float | None:
    if not text:  # keep finished jobs forever
        return None
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not math.isfinite(days) or days <= 0:
        raise LimitError(f"GENFLEET_RETENTION_DAYS: must be a number of days > 0, got {text!r}")
    return days
