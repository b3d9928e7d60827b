"""Operator-set limits on what one spec may ask for, from GENFLEET_MAX_* environment variables.

Read on first use rather than at import, so that a bad value fails the command that needed it
with the variable's name (see cluster/cli_errors.py) instead of a traceback from any import.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass


class LimitError(Exception):
    """A GENFLEET_* variable has a value genfleet cannot use.

    Not a ValueError: raised inside a pydantic validator, a ValueError would be reported as a
    mistake in the user's spec, when it is the operator's.
    """


@dataclass(frozen=True)
class Limits:
    max_spec_bytes: int
    max_epochs: int
    max_samples: int
    max_workers: int


@functools.cache
def limits() -> Limits:
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
