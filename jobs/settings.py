"""Every environment variable genfleet reads, in one place, with its default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
}


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
            dashboard_port=int(env.get("GENFLEET_DASHBOARD_PORT", "8501")),
            dashboard_password=env.get("GENFLEET_DASHBOARD_PASSWORD") or None,
        )
