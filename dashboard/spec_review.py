"""Validate spec text as it is edited, show each error beside the line it names, and submit.

Both the YAML editor and the form builder end here, so a spec is judged by one validator
(`jobs.spec.load_spec_text`) whichever way it was written.
"""

from __future__ import annotations

import hashlib
import secrets

import streamlit as st
import yaml

from dashboard import connection
from dashboard.links import JOB_PAGE, job_query
from jobs.spec import JobSpec, load_spec_text
from jobs.spec_errors import FieldError, SpecError

NONCE_KEY = "submit.nonce"
SUBMITTED_KEY = "submit.submitted"  # idempotency key -> job id, for this browser session


def review_and_submit(text: str, key: str) -> None:
    """Everything under an editor: errors or a preview, then the submit button."""
    if not text.strip():
        st.info("Paste a spec, upload a file, or start from an example.")
        return
    try:
        spec = load_spec_text(text, "spec")
    except SpecError as exc:
        show_errors(text, exc.errors)
        return
    st.success("Valid spec.")
    show_preview(spec)
    submit_controls(spec, key)


def show_errors(text: str, errors: list[FieldError]) -> None:
    lines = text.splitlines()
    st.error(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in this spec:")
    for error in errors:
        where = f"line {error.line}" if error.line else "document"
        field = f" · `{error.field}`" if error.field else ""
        quoted = ""
        if error.line and error.line <= len(lines):
            quoted = f"\n\n```yaml\n{error.line:>4} | {lines[error.line - 1]}\n```"
        st.markdown(f"**{where}**{field}: {error.message}{quoted}")


def show_preview(spec: JobSpec) -> None:
    columns = st.columns(5)
    columns[0].metric("Model", spec.model_type)
    columns[1].metric("Dataset", spec.data.dataset)
    columns[2].metric("Epochs", spec.train.epochs)
    columns[3].metric("Priority", spec.priority)
    columns[4].metric("CPUs / GPUs", f"{spec.needs_cpus:g} / {spec.needs_gpus:g}")
    if spec.sweep is not None:
        sweep = spec.sweep
        st.caption(
            f"Sweep: {sweep.trials} trials, {sweep.concurrent_trials} at once, {sweep.search} search, {sweep.scheduler} "
            f"scheduler, {sweep.mode} {sweep.metric}, varying {', '.join(sweep.space)}"
        )
    with st.expander("Full spec, defaults filled in"):
        st.code(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False), language="yaml")


def idempotency_key(spec: JobSpec) -> str:
    """Same spec from the same session -> same key, so a double click queues one job."""
    nonce = st.session_state.setdefault(NONCE_KEY, secrets.token_hex(8))
    digest = hashlib.sha256(spec.model_dump_json().encode("utf-8")).hexdigest()[:32]
    return f"dashboard-{nonce}-{digest}"


def _start_new_copy() -> None:
    st.session_state[NONCE_KEY] = secrets.token_hex(8)


def submit_controls(spec: JobSpec, key: str) -> None:
    submitted: dict[str, str] = st.session_state.setdefault(SUBMITTED_KEY, {})
    request = idempotency_key(spec)
    if st.button("Submit", type="primary", key=f"{key}.submit"):
        submitted[request] = connection.queue().submit(spec, idempotency_key=request)
    job_id = submitted.get(request)
    if job_id is None:
        return
    st.success(f"Queued as job `{job_id}`.")
    st.page_link(JOB_PAGE, label=f"Open job {job_id}", query_params=job_query(job_id))
    st.caption("Submitting this spec again returns the same job.")
    st.button("Submit another copy", key=f"{key}.new_copy", on_click=_start_new_copy)
