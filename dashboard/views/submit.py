"""Submit page: write a spec as YAML (paste, upload, an example, a clone) or build one in a form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

import jobs
from dashboard import connection
from dashboard.field_inputs import field_input, form_fields
from dashboard.spec_builder import (
    DOMAINS,
    SearchRange,
    build_spec,
    parse_range,
    range_to_yaml,
    spec_to_yaml,
    tunable_paths,
)
from dashboard.spec_review import review_and_submit
from jobs.limits import LIMITS
from jobs.model_params import PARAMS_BY_MODEL
from jobs.spec import DATASETS, ScalingSpec, SweepSpec, TrainSpec
from jobs.store import JobNotFound

EXAMPLES_DIR = Path(jobs.__file__).with_name("examples")
TEXT_KEY = "submit.text"
NOTICE_KEY = "submit.notice"
SPACE_KEY = "form.space"
TRAIN_FIELDS = ["epochs", "batch_size", "lr", "optimizer", "lr_schedule", "seed"]
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


def example_specs() -> dict[str, Path]:
    return {path.stem: path for path in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def _load_example() -> None:
    path = example_specs()[st.session_state["submit.example"]]
    st.session_state[TEXT_KEY] = path.read_text(encoding="utf-8")


def clone_job(job_id: str) -> None:
    """Put an existing job's spec into the editor (its kind and sweep come along)."""
    try:
        record = connection.store().get(job_id.strip())
    except JobNotFound:
        st.session_state[NOTICE_KEY] = f"No job `{job_id}` to clone."
        return
    st.session_state[TEXT_KEY] = spec_to_yaml(record.job_spec().to_yaml_dict())
    st.session_state[NOTICE_KEY] = None


def _load_upload() -> None:
    upload = st.session_state["submit.upload"]
    if upload is None:
        return
    data = upload.getvalue()
    if len(data) > LIMITS.max_spec_bytes:
        st.session_state[NOTICE_KEY] = (
            f"`{upload.name}` is {len(data)} bytes; the limit is {LIMITS.max_spec_bytes} "
            "(GENFLEET_MAX_SPEC_BYTES)."
        )
        return
    try:
        st.session_state[TEXT_KEY] = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        st.session_state[NOTICE_KEY] = f"`{upload.name}` is not UTF-8 text (byte {exc.start})."
        return
    st.session_state[NOTICE_KEY] = None


def _clone_from_query() -> None:
    # ?clone=<id> comes from the Job page's "Clone" link; load it once, then let the user edit.
    job_id = st.query_params.get("clone")
    if job_id and st.session_state.get("submit.cloned") != job_id:
        st.session_state["submit.cloned"] = job_id
        clone_job(job_id)


def yaml_editor() -> None:
    examples = example_specs()
    start, clone, upload = st.columns([2, 2, 3])
    with start:
        st.selectbox("Start from an example", list(examples), key="submit.example")
        st.button("Load example", on_click=_load_example)
    with clone:
        st.text_input("Clone a job (id)", key="submit.clone_id")
        st.button("Clone job", on_click=lambda: clone_job(st.session_state["submit.clone_id"]))
    with upload:
        st.file_uploader(
            f"Upload YAML (at most {LIMITS.max_spec_bytes // 1024} KiB)",
            type=["yaml", "yml"],
            key="submit.upload",
            on_change=_load_upload,
        )
    if st.session_state.get(NOTICE_KEY):
        st.warning(st.session_state[NOTICE_KEY])
    text = st.text_area("Spec (YAML)", key=TEXT_KEY, height=420)
    review_and_submit(text, key="yaml")


def fields_grid(model: Any, key: str, names: list[str] | None = None) -> dict[str, Any]:
    columns = st.columns(3)
    values = {}
    for index, (name, field) in enumerate(form_fields(model, names).items()):
        with columns[index % len(columns)]:
            values[name] = field_input(name, field, f"{key}.{name}")
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
    domain.selectbox("Domain", DOMAINS, key="form.range_domain")
    values.text_input(
        "Values", key="form.range_values", placeholder="choice/grid: 16, 32 · range: 0.0001, 0.01"
    )
    add.button("Add range", on_click=_add_range, args=(model_type,))
    if st.session_state.get("form.range_error"):
        st.warning(st.session_state["form.range_error"])
    return entries


def _edit_as_yaml(text: str) -> None:
    st.session_state[TEXT_KEY] = text


def form_builder() -> None:
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
    train = fields_grid(TrainSpec, "form.train", TRAIN_FIELDS)
    with st.expander("Resources"):
        scaling = fields_grid(ScalingSpec, "form.scaling", SCALING_FIELDS)
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
            sweep=sweep,
            space=space,
        )
    )
    st.markdown("**The YAML this form produces**")
    st.code(text, language="yaml")
    st.button("Edit as YAML", on_click=_edit_as_yaml, args=(text,))
    review_and_submit(text, key="form")


st.title("Submit a job")
_clone_from_query()
yaml_tab, form_tab = st.tabs(["YAML", "Form builder"])
with yaml_tab:
    yaml_editor()
with form_tab:
    form_builder()
