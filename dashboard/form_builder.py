"""The Submit page's form builder: a train job or a sweep from widgets, shown as the YAML it
produces, then validated and submitted like any pasted spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from dashboard.field_inputs import field_input, form_fields
from dashboard.spec_builder import (
    SearchRange,
    build_spec,
    parse_range,
    range_to_yaml,
    spec_to_yaml,
)
from dashboard.spec_review import review_and_submit
from jobs.model_params import PARAMS_BY_MODEL
from jobs.recipes import RECIPES
from jobs.search_domains import SEARCH_DOMAINS
from jobs.spec import DATASETS, ScalingSpec, SchedulingSpec, SweepSpec, TrainSpec, tunable_paths

SPACE_KEY = "form.space"
TRAIN_FIELDS = [
    "epochs", "batch_size", "lr", "optimizer", "lr_schedule", "warmup_steps", "ema_decay", "seed"
]  # fmt: skip
SCALING_FIELDS = ["num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker"]
SWEEP_FIELDS = [
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "search",
    "scheduler",
    "grace_period",
]


def fields_grid(
    model: Any,
    key: str,
    names: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A widget per field, starting at `defaults` where given, else at the field's default."""
    columns = st.columns(3)
    values = {}
    for index, (name, field) in enumerate(form_fields(model, names).items()):
        with columns[index % len(columns)]:
            start = (defaults or {}).get(name, field.get_default(call_default_factory=True))
            values[name] = field_input(name, field, f"{key}.{name}", start)
    return values


def _add_range(model_type: str) -> None:
    path = st.session_state["form.range_path"]
    try:
        entry = parse_range(
            path, st.session_state["form.range_domain"], st.session_state["form.range_values"]
        )
    except ValueError as exc:
        st.session_state["form.range_error"] = str(exc)
        return
    st.session_state["form.range_error"] = None
    st.session_state.setdefault(SPACE_KEY, {})[(model_type, path)] = entry


def _remove_range(model_type: str, path: str) -> None:
    st.session_state[SPACE_KEY].pop((model_type, path), None)


def space_editor(model_type: str) -> list[SearchRange]:
    """Search-space ranges added one at a time; each model keeps its own."""
    st.markdown("**Search space**")
    space: dict[tuple[str, str], SearchRange] = st.session_state.setdefault(SPACE_KEY, {})
    entries = [entry for (model, _), entry in space.items() if model == model_type]
    if not entries:
        st.caption("A sweep varies at least one setting: pick it, a domain and values, then Add.")
    for entry in entries:
        text, remove = st.columns([5, 1])
        text.code(range_to_yaml(entry), language="yaml")
        remove.button(
            "Remove",
            key=f"form.remove.{entry.path}",
            on_click=_remove_range,
            args=(model_type, entry.path),
        )
    path, domain, values, add = st.columns([3, 2, 3, 1], vertical_alignment="bottom")
    path.selectbox("Parameter", tunable_paths(model_type), key="form.range_path")
    domain.selectbox("Domain", list(SEARCH_DOMAINS), key="form.range_domain")
    values.text_input(
        "Values", key="form.range_values", placeholder="choice/grid: 16, 32 · range: 0.0001, 0.01"
    )
    add.button("Add", on_click=_add_range, args=(model_type,))
    if st.session_state.get("form.range_error"):
        st.warning(st.session_state["form.range_error"])
    return entries


def form_builder(edit_as_yaml: Callable[[str], None]) -> None:
    """The form, its YAML, and a button that hands the YAML to the editor (`edit_as_yaml`)."""
    kind = st.radio("Kind", ["train", "sweep"], horizontal=True, key="form.kind")
    name_column, priority_column = st.columns(2)
    name = name_column.text_input("Name", value="my-job", key="form.name")
    priority = priority_column.slider("Priority (higher runs first)", 0, 9, 5, key="form.priority")
    model_column, data_column = st.columns(2)
    model_type = model_column.selectbox("Model", list(PARAMS_BY_MODEL), key="form.model")
    dataset = data_column.selectbox("Dataset", DATASETS, key="form.dataset")
    st.markdown("**Model parameters**")
    params = fields_grid(PARAMS_BY_MODEL[model_type], f"form.params.{model_type}")
    st.markdown("**Training**")
    # Each model's default recipe (jobs/recipes.py) fills the form, as it fills a YAML spec.
    train = fields_grid(
        TrainSpec, f"form.train.{model_type}", TRAIN_FIELDS, RECIPES.get(model_type, {})
    )
    with st.expander("Resources"):
        scaling = fields_grid(ScalingSpec, "form.scaling", SCALING_FIELDS)
        scheduling = fields_grid(SchedulingSpec, "form.scheduling")
    sweep, space = None, None
    if kind == "sweep":
        st.markdown("**Sweep**")
        sweep = fields_grid(SweepSpec, "form.sweep", SWEEP_FIELDS)
        space = space_editor(model_type)
    text = spec_to_yaml(
        build_spec(
            name=name,
            kind=kind,
            priority=priority,
            model_type=model_type,
            model_params=params,
            dataset=dataset,
            train=train,
            scaling=scaling,
            scheduling=scheduling,
            sweep=sweep,
            space=space,
        )
    )
    st.markdown("**The YAML this form produces**")
    st.code(text, language="yaml")
    st.button("Edit as YAML", on_click=edit_as_yaml, args=(text,))
    review_and_submit(text, key="form")
