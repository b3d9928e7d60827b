"""Spec errors that name the field, the bad value, what is allowed, and the YAML line."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pydantic import ValidationError

from jobs.failures import NotRetryable
from jobs.model_params import PARAMS_BY_MODEL
from jobs.search_domains import SEARCH_DOMAINS


class LineLookup(Protocol):
    """Where a field was written: jobs/yaml_source.py's `YamlSource` is one."""

    def line_of(self, path: str) -> int | None: ...


_NAMED_FIELD = re.compile(r"^[a-z_]+(\.[\w.\[\]]+)?: ")
# Union members of the search space add their class name: space.train.lr.Choice.choice
_DOMAIN_CLASSES = {domain.__name__ for domain in SEARCH_DOMAINS.values()}


@dataclass(frozen=True)
class FieldError:
    field: str  # dotted path, "" for the document itself
    message: str
    line: int | None = None

    def located(self, source: LineLookup | None) -> FieldError:
        if source is None or self.line is not None:
            return self
        return replace(self, line=source.line_of(self.field))

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.message}" if self.field else f"{where}{self.message}"


class SpecError(ValueError, NotRetryable):
    """A spec failed validation; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError], source_name: str | None = None) -> None:
        self.errors = errors
        self.source_name = source_name
        super().__init__(str(self))

    def with_source(self, source_name: str) -> SpecError:
        return SpecError(self.errors, source_name)

    def __str__(self) -> str:
        prefix = f"{self.source_name}: " if self.source_name else ""
        return "\n".join(f"{prefix}{error}" for error in self.errors)

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {"source": self.source_name, "field": e.field, "line": e.line, "message": e.message}
            for e in self.errors
        ]


def format_validation_error(exc: ValidationError, source: LineLookup | None) -> list[FieldError]:
    errors = []
    for item in exc.errors(include_url=False):
        path = _field_path(item["loc"])
        message = describe_error(item)
        if not path and _NAMED_FIELD.match(message):
            # Cross-field checks name their field at the start: "sweep: required when ..."
            path, message = message.split(": ", 1)
        errors.append(FieldError(path, message).located(source))
    return errors


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    # The discriminated union puts the model type into the location: model.pixelcnn.params.x
    if len(parts) >= 2 and parts[0] == "model" and parts[1] in PARAMS_BY_MODEL:
        del parts[1]
    elif parts == ["model"]:  # the union could not pick a variant: the type is what is wrong
        parts.append("type")
    parts = [part for part in parts if part not in _DOMAIN_CLASSES]
    return ".".join(parts)


def describe_error(item: Any) -> str:
    """One pydantic error as a user reads it: what is allowed and what they wrote."""
    kind = item["type"]
    value = item.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("union_tag_not_found", "union_tag_invalid"):  # path is "model"; see _field_path
        return f"must be one of {', '.join(PARAMS_BY_MODEL)}" + _got(
            value.get("type") if isinstance(value, dict) else value
        )
    if kind == "literal_error":
        allowed = item.get("ctx", {}).get("expected", "")
        return f"must be one of {allowed}" + _got(value)
    if kind == "value_error":
        return str(item["ctx"]["error"])
    message = item["msg"][0].lower() + item["msg"][1:]
    for wordy, short in _SHORTER:
        message = message.replace(wordy, short)
    return message + _got(value)


_SHORTER = (
    ("input should be", "must be"),
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _got(value: Any) -> str:
    text = repr(value)
    return f", got {text[:80]}" if len(text) <= 80 else f", got {text[:77]}..."
