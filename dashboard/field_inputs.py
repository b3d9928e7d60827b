"""One form widget per spec field, with its default, bounds and help taken from the spec model.

Generating the widgets from the pydantic models keeps the form builder in step with the spec:
a new model parameter appears in the form without touching the dashboard.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import annotated_types
import streamlit as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def form_fields(model: type[BaseModel], names: list[str] | None = None) -> dict[str, FieldInfo]:
    """The fields of `model` the form can edit: plain numbers, flags, choices and text."""
    chosen = names or list(model.model_fields)
    return {
        name: model.model_fields[name]
        for name in chosen
        if model.model_fields[name].annotation in (int, float, bool, str)
        or get_origin(model.model_fields[name].annotation) is Literal
    }


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
    low, high = number_bounds(field, annotation)
    return st.number_input(
        label,
        min_value=low,
        max_value=high,
        value=annotation(default),
        step=1 if annotation is int else None,
        format="%d" if annotation is int else "%g",
        key=key,
        help=field.description,
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
