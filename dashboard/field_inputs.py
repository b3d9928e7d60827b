"""One form widget per spec field, with its default, bounds and help taken from the spec model.

Generating the widgets from the pydantic models keeps the form builder in step with the spec:
a new model parameter appears in the form without touching the dashboard.
"""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

import annotated_types
import streamlit as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def form_fields(model: type[BaseModel], names: list[str] | None = None) -> dict[str, FieldInfo]:
    """The fields of `model` the form can edit: numbers (optional ones too), flags, choices and
    text."""
    chosen = names or list(model.model_fields)
    return {
        name: model.model_fields[name]
        for name in chosen
        if model.model_fields[name].annotation in (int, float, bool, str)
        or get_origin(model.model_fields[name].annotation) is Literal
        or optional_number(model.model_fields[name].annotation) is not None
    }


def optional_number(annotation: Any) -> type | None:
    """int or float for a field typed `int | None` or `float | None`; else None."""
    if get_origin(annotation) is not UnionType:
        return None
    others = [arg for arg in get_args(annotation) if arg is not NoneType]
    return others[0] if len(others) == 1 and others[0] in (int, float) else None


def field_input(label: str, field: FieldInfo, key: str, default: Any) -> Any:
    """Render the widget for one field, starting at `default`, and return its value."""
    annotation = field.annotation
    if annotation is bool:
        return st.checkbox(label, value=default, key=key, help=field.description)
    if get_origin(annotation) is Literal:
        options = list(get_args(annotation))
        return st.selectbox(
            label, options, index=options.index(default), key=key, help=field.description
        )
    if annotation is str:
        return st.text_input(label, value=default, key=key, help=field.description)
    number = optional_number(annotation) or annotation
    low, high = number_bounds(field, number)
    return st.number_input(
        label,
        min_value=low,
        max_value=high,
        value=None if default is None else number(default),  # an empty box leaves it unset
        step=1 if number is int else None,
        format="%d" if number is int else "%g",
        key=key,
        help=field.description,
        placeholder="unset" if default is None else None,
    )


def number_bounds(field: FieldInfo, number: type) -> tuple[Any, Any]:
    """(min, max) for a number widget; strict bounds of floats stay to the spec's validation."""
    low = high = None
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = number(bound.ge)
        elif isinstance(bound, annotated_types.Gt) and number is int:
            low = int(bound.gt) + 1
        elif isinstance(bound, annotated_types.Le):
            high = number(bound.le)
        elif isinstance(bound, annotated_types.Lt) and number is int:
            high = int(bound.lt) - 1
    return low, high
