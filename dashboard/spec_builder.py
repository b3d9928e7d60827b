"""Turn the Submit page's form values into spec YAML, the same text a researcher would write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from jobs.search_domains import SEARCH_DOMAINS, RandInt, Range


@dataclass(frozen=True)
class SearchRange:
    """One entry of `sweep.space`: a dotted spec path and the values Tune may try there."""

    path: str
    domain: str
    values: list[Any]

    def as_space_entry(self) -> dict[str, list[Any]]:
        return {self.domain: self.values}


def parse_range(path: str, domain: str, text: str) -> SearchRange:
    """Read "16, 32" or "0.0001, 0.01" typed into the form; ValueError names what is wrong."""
    if domain not in SEARCH_DOMAINS:
        names = ", ".join(SEARCH_DOMAINS)
        raise ValueError(f"{path}: domain must be one of {names}, got {domain!r}")
    values = [_scalar(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise ValueError(f"{path}: give at least one value, comma-separated")
    kind = SEARCH_DOMAINS[domain]
    if issubclass(kind, Range):
        if len(values) != 2 or not all(_is_number(value) for value in values):
            raise ValueError(f"{path}: {domain} takes two numbers 'low, high', got {text!r}")
        if kind is RandInt and not all(isinstance(value, int) for value in values):
            raise ValueError(f"{path}: {domain} takes two integers, got {text!r}")
    return SearchRange(path, domain, values)


def build_spec(
    *,
    name: str,
    kind: str,
    priority: int,
    model_type: str,
    model_params: dict[str, Any],
    dataset: str,
    train: dict[str, Any],
    scaling: dict[str, Any],
    scheduling: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    space: list[SearchRange] | None = None,
) -> dict[str, Any]:
    """A spec mapping in the order people read one: what, which model, on what, how; the
    scheduling settings left unset stay out of it."""
    spec: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "priority": priority,
        "model": {"type": model_type, "params": dict(model_params)},
        "data": {"dataset": dataset},
        "train": dict(train),
        "scaling": dict(scaling),
    }
    chosen = {key: value for key, value in (scheduling or {}).items() if value is not None}
    if chosen:
        spec["scheduling"] = chosen
    if kind == "sweep":
        entries = {entry.path: entry.as_space_entry() for entry in space or []}
        spec["sweep"] = {**(sweep or {}), "space": entries}
    return spec


class _OneLine(dict):
    """A mapping written on one line: `train.lr: {loguniform: [0.0001, 0.01]}`."""


class _SpecDumper(yaml.SafeDumper):
    pass


_SpecDumper.add_representer(
    _OneLine, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, True)
)


def spec_to_yaml(spec: dict[str, Any]) -> str:
    """Block style for sections, one line for params and each search range, as the examples
    in jobs/examples/ are written."""
    readable = dict(spec)
    if readable.get("model"):
        readable["model"] = {**readable["model"], "params": _OneLine(readable["model"]["params"])}
    if readable.get("sweep"):
        space = {path: _OneLine(entry) for path, entry in readable["sweep"]["space"].items()}
        readable["sweep"] = {**readable["sweep"], "space": space}
    return yaml.dump(readable, Dumper=_SpecDumper, sort_keys=False, width=100)


def range_to_yaml(entry: SearchRange) -> str:
    return spec_to_yaml({entry.path: _OneLine(entry.as_space_entry())}).strip()


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    return text.strip("'\"")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
