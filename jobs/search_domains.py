"""Search domains: how a sweep's `space` lets one spec path vary, as in
`train.lr: {loguniform: [0.0001, 0.01]}`.

The one place that names them: the spec validates them (jobs/spec.py), cluster/sweep.py turns
each into the Tune domain of the same meaning, and the Submit form offers `SEARCH_DOMAINS`.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

# Every value a list domain gives is validated as a whole spec, so this bounds the work one
# submitted spec can cause (a 64 KiB spec could otherwise list 16,000 values: seconds of CPU).
MAX_DOMAIN_VALUES = 100


class Domain(BaseModel):
    """One search domain, written as a mapping with one key: its name."""

    # As every spec section: an unknown key is an error, and JSON has no inf or NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def name(cls) -> str:
        [name] = cls.model_fields
        return name

    def values_to_check(self) -> list[Any]:
        """Values that, each valid at the domain's path, make every value it can take valid."""
        raise NotImplementedError


class ValueList(Domain):
    """A domain that lists its values."""

    @property
    def values(self) -> list[Any]:
        return getattr(self, self.name())

    def values_to_check(self) -> list[Any]:
        return self.values


class Range(Domain):
    """A domain of the numbers from `low` to `high`, given as `[low, high]`."""

    @property
    def bounds(self) -> tuple[float, float]:
        return getattr(self, self.name())

    def values_to_check(self) -> list[Any]:
        return list(self.bounds)


class Choice(ValueList):
    """Each trial samples one of the values; `search: grid` tries every one instead."""

    choice: list[Any] = Field(min_length=1, max_length=MAX_DOMAIN_VALUES)


class Grid(ValueList):
    """Every value is tried, in every combination with the other grids."""

    grid: list[Any] = Field(min_length=1, max_length=MAX_DOMAIN_VALUES)


class Uniform(Range):
    """A float sampled uniformly between the bounds."""

    uniform: tuple[float, float]


class LogUniform(Range):
    """A float whose logarithm is sampled uniformly: learning rates, decays; bounds > 0."""

    loguniform: tuple[float, float]


class RandInt(Range):
    """An integer from `low` up to, but not including, `high` (as Tune's randint)."""

    randint: tuple[int, int]

    def values_to_check(self) -> list[Any]:
        low, high = self.randint
        return [low, high - 1]


SearchDomain = Choice | Grid | Uniform | LogUniform | RandInt
SEARCH_DOMAINS: dict[str, type[Domain]] = {cls.name(): cls for cls in get_args(SearchDomain)}
