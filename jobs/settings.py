"""Every environment variable genfleet reads, in one place, with its default."""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from jobs.keys import PREFIX_PATTERN
from jobs.limits import LimitError, Limits

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
    "GENFLEET_WARM_RUNNERS": "idle pre-started runners a dispatcher keeps for one-worker CPU "
    "jobs (1; 0: none)",
    "GENFLEET_DIRECT_RUNS": "1: one-worker CPU runs and sweep trials train in one process; "
    "0: in a Ray Train worker group, as multi-worker runs do (1 for `genfleet up`, else 0)",
}
# Redis's own memory notation (redis.conf): k, m, g are powers of 1000, kb, mb, gb of 1024.
REDIS_MEMORY = re.compile(r"(\d+)(b|k|kb|m|mb|g|gb)?")
DEFAULT_REDIS_MAXMEMORY = "1gb"
DEFAULT_DASHBOARD_PORT = 8501
DEFAULT_WARM_RUNNERS = 1
MAX_WARM_RUNNERS = 64
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's Redis.from_url accepts
RAY_ADDRESS_WORDS = ("auto", "local")  # ray.init's: the cluster started on this machine, a new one
HOST = re.compile(r"[A-Za-z0-9_.:\-\[\]]+")  # a name, an IPv4 address or a bracketed IPv6 one


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
    warm_runners: int = DEFAULT_WARM_RUNNERS
    direct_runs: bool = False

    @classmethod
    def from_env(cls, direct_runs: bool = False) -> Settings:
        """`direct_runs`: GENFLEET_DIRECT_RUNS's default, on for the one-machine stack of
        `genfleet up`; a cluster's dispatchers keep Ray Train for one-worker runs unless told,
        until the multi-host fault scenarios (tests/cluster) pass with direct runs."""
        env = os.environ
        home = Path(env.get("GENFLEET_HOME", Path.home() / ".genfleet")).expanduser()
        return cls(
            home=home,
            redis_url=_redis_url(env.get("GENFLEET_REDIS_URL", "")),
            prefix=_prefix(env.get("GENFLEET_PREFIX", "genfleet")),
            ray_address=_ray_address(env.get("GENFLEET_RAY_ADDRESS", "")),
            storage=env.get("GENFLEET_STORAGE", str(home / "storage")),
            data_dir=Path(env.get("GENFLEET_DATA_DIR", home / "data")).expanduser(),
            dashboard_address=_dashboard_address(env.get("GENFLEET_DASHBOARD_ADDRESS", "")),
            dashboard_port=_dashboard_port(env.get("GENFLEET_DASHBOARD_PORT", "")),
            dashboard_password=env.get("GENFLEET_DASHBOARD_PASSWORD") or None,
            max_cluster=MaxCluster.parse(env.get("GENFLEET_MAX_CLUSTER", "")),
            redis_maxmemory=_redis_maxmemory(env.get("GENFLEET_REDIS_MAXMEMORY", "")),
            retention_days=_retention_days(env.get("GENFLEET_RETENTION_DAYS", "")),
            warm_runners=_warm_runners(env.get("GENFLEET_WARM_RUNNERS", "")),
            direct_runs=_direct_runs(env.get("GENFLEET_DIRECT_RUNS", ""), direct_runs),
        )


@functools.cache
def limits() -> Limits:
    """GENFLEET_MAX_*, read on first use rather than at import, so that a bad value fails the
    command that needed it with the variable's name (see cluster/cli_errors.py) instead of a
    traceback from any import; and apart from Settings, so that validating a spec needs no
    other variable to be right."""
    return Limits(
        max_spec_bytes=_positive_int("GENFLEET_MAX_SPEC_BYTES", 64 * 1024),
        max_epochs=_positive_int("GENFLEET_MAX_EPOCHS", 10_000),
        max_samples=_positive_int("GENFLEET_MAX_SAMPLES", 1024),
        max_workers=_positive_int("GENFLEET_MAX_WORKERS", 256),
    )


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise LimitError(f"{name}: must be a positive integer, got {raw!r}")
    return value


def _redis_url(text: str) -> str | None:
    """None starts the embedded server. The error never shows the URL: it may hold a password."""
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in REDIS_URL_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in REDIS_URL_SCHEMES)
        raise LimitError(f"GENFLEET_REDIS_URL: must start with one of {schemes}")
    try:
        parts.port  # noqa: B018 - parsing it is the check: redis-py would fail on first use
    except ValueError:
        raise LimitError("GENFLEET_REDIS_URL: its port must be a number from 0 to 65535") from None
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise LimitError("GENFLEET_REDIS_URL: its path must be a database number such as /0")
    return text


def _ray_address(text: str) -> str | None:
    """None starts a local Ray; else `auto`, `local`, `host:port` or `ray://host:port`."""
    if not text:
        return None
    if text in RAY_ADDRESS_WORDS:
        return text
    host, colon, port = text.removeprefix("ray://").rpartition(":")
    if not (colon and HOST.fullmatch(host) and port.isdigit() and 0 < int(port) <= 65535):
        raise LimitError(
            f"GENFLEET_RAY_ADDRESS: expected host:port, ray://host:port, auto or local, "
            f"got {text!r}"
        )
    return text


def _dashboard_address(text: str) -> str:
    if not text:
        return "127.0.0.1"
    if not HOST.fullmatch(text):
        raise LimitError(
            f"GENFLEET_DASHBOARD_ADDRESS: expected a host name or an IP address, got {text!r}"
        )
    return text


def _prefix(text: str) -> str:
    if not PREFIX_PATTERN.fullmatch(text):
        raise LimitError(f"GENFLEET_PREFIX: must match {PREFIX_PATTERN.pattern}, got {text!r}")
    return text


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


def _warm_runners(text: str) -> int:
    if not text:
        return DEFAULT_WARM_RUNNERS
    count = int(text) if text.strip().isdecimal() else -1
    if not 0 <= count <= MAX_WARM_RUNNERS:
        raise LimitError(
            f"GENFLEET_WARM_RUNNERS: must be a whole number from 0 to {MAX_WARM_RUNNERS}, "
            f"got {text!r}"
        )
    return count


def _direct_runs(text: str, default: bool) -> bool:
    if text.strip() not in ("", "0", "1"):
        raise LimitError(f"GENFLEET_DIRECT_RUNS: must be 1 or 0, got {text!r}")
    return default if not text.strip() else text.strip() == "1"
