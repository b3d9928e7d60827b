"""examples/quickstart.ipynb, executed as a user runs it: a real kernel, a real Redis, and a
dispatcher on a real local Ray running the job it submits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.ray_fixtures import Stack

pytestmark = pytest.mark.ray

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def outputs(cell: dict[str, Any]) -> tuple[str, set[str]]:
    """A code cell's printed text and value, and the MIME types of everything it displayed."""
    text, kinds = "", set()
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream" and output["name"] == "stdout":
            text += output["text"]
        elif output["output_type"] == "execute_result":
            text += output["data"].get("text/plain", "")
        kinds |= set(output.get("data", {}))
    return text, kinds


def test_quickstart_notebook_submits_waits_plots_and_shows_samples(
    stack: Stack, dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_REDIS_URL", stack.settings.redis_url or "")
    monkeypatch.setenv("GENFLEET_PREFIX", stack.settings.prefix)
    monkeypatch.setenv("GENFLEET_HOME", str(stack.settings.home))
    monkeypatch.setenv("GENFLEET_STORAGE", stack.settings.storage)  # where the run's images lie
    # Jupyter's own inline plots, whatever backend an earlier import chose for this process.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    submitted, waited, plotted, shown = (outputs(cell) for cell in code[1:])
    [job] = stack.store.list_jobs().records
    assert submitted[0] == f"Job('{job.id}')"
    assert waited[0].startswith("succeeded test bits/dim: ")
    assert "application/vnd.jupyter.widget-view+json" in waited[1]  # the bar, as a widget
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [w["state"] for w in widgets.values() if w["model_name"].endswith("ProgressModel")]
    assert [(bar["value"], bar["max"]) for bar in bars] == [(3, 3)]  # 3 epochs of 3, full
    assert float(waited[0].split()[-1]) == pytest.approx(
        job.progress["test_bits_per_dim"], abs=1e-4
    )
    assert "image/png" in plotted[1] and "test_bits_per_dim" in plotted[0]
    assert "image/png" in shown[1]
