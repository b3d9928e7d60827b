"""Specs as users hand them to the client: a JobSpec, a dict, a YAML file or YAML text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genfleet.errors import SpecFileError
from jobs.spec import JobSpec, load_spec_text, validate_spec_dict

SpecLike = JobSpec | str | Path | Mapping[str, Any]


def as_spec(spec: SpecLike) -> JobSpec:
    """A JobSpec from a JobSpec, a mapping, a file (a Path, or a str of one line) or YAML text
    (a str of several lines)."""
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, Mapping):
        return validate_spec_dict(dict(spec))
    if isinstance(spec, str) and "\n" in spec:
        return load_spec_text(spec)
    if isinstance(spec, str | Path):
        return _read_spec_file(Path(spec))
    raise TypeError(f"spec: a JobSpec, a mapping, a path or YAML text, got {type(spec).__name__}")


def _read_spec_file(path: Path) -> JobSpec:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot read ({exc.strerror})") from None
    return load_spec_text(text, str(path))
