"""Operator-set limits on what one spec may ask for, which jobs/settings.py reads from the
GENFLEET_MAX_* environment variables, and the error for any GENFLEET_* value genfleet cannot use.
"""

from __future__ import annotations

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
