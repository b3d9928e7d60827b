"""Operator-set limits on what one spec may ask for (environment variables, read at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Limits:
    max_spec_bytes: int
    max_epochs: int
    max_samples: int
    max_workers: int


LIMITS = Limits(
    max_spec_bytes=_env_int("GENFLEET_MAX_SPEC_BYTES", 64 * 1024),
    max_epochs=_env_int("GENFLEET_MAX_EPOCHS", 10_000),
    max_samples=_env_int("GENFLEET_MAX_SAMPLES", 1024),
    max_workers=_env_int("GENFLEET_MAX_WORKERS", 256),
)
