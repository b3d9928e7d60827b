"""`bench/recipe_bench.py --quick` runs end to end and prints its table, so the bench cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODELS = ["pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "vae"]
HANG_SECONDS = 180  # about 30 s on one loaded CPU; a hang must not stall the suite


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of the markdown table's data rows (not its header or separator)."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_quick_bench_prints_a_row_per_model_with_consistent_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "bench/recipe_bench.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == BENCH_MODELS
    for model, steps, *numbers, goal in rows:
        assert steps == "10"
        val_default, val_plain, val_ratio, test_default, test_plain, test_ratio = map(
            float, numbers
        )
        assert 0.5 < val_default < 8 and 0.5 < test_default < 8, model  # bits/dim
        assert val_ratio == pytest.approx(val_default / val_plain, abs=1e-3)
        assert test_ratio == pytest.approx(test_default / test_plain, abs=1e-3)
        assert goal in ("yes", "NO")
