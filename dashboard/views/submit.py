"""Submit page: write a spec as YAML (paste, upload, an example, a clone) or build one in a form."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import jobs
from dashboard import connection
from dashboard.form_builder import form_builder
from dashboard.spec_builder import spec_to_yaml
from dashboard.spec_review import review_and_submit
from jobs.records import JobNotFound
from jobs.settings import limits

EXAMPLES_DIR = Path(jobs.__file__).with_name("examples")
TEXT_KEY = "submit.text"
NOTICE_KEY = "submit.notice"


def example_specs() -> dict[str, Path]:
    """`name` for the quick examples, `paper/name` for the paper configurations."""
    paths = sorted(EXAMPLES_DIR.rglob("*.yaml"))
    return {path.relative_to(EXAMPLES_DIR).with_suffix("").as_posix(): path for path in paths}


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
    if len(data) > limits().max_spec_bytes:
        st.session_state[NOTICE_KEY] = (
            f"`{upload.name}` is {len(data)} bytes; the limit is {limits().max_spec_bytes} "
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
            f"Upload YAML (at most {limits().max_spec_bytes // 1024} KiB)",
            type=["yaml", "yml"],
            key="submit.upload",
            on_change=_load_upload,
        )
    if st.session_state.get(NOTICE_KEY):
        st.warning(st.session_state[NOTICE_KEY])
    text = st.text_area("Spec (YAML)", key=TEXT_KEY, height=420)
    review_and_submit(text, key="yaml")


def _edit_as_yaml(text: str) -> None:
    st.session_state[TEXT_KEY] = text


st.title("Submit a job")
_clone_from_query()
yaml_tab, form_tab = st.tabs(["YAML", "Form builder"])
with yaml_tab:
    yaml_editor()
with form_tab:
    form_builder(edit_as_yaml=_edit_as_yaml)
