"""`bench/data_path_bench.py --quick` runs end to end, so the bench cannot rot; its shares are
fractions of a step and its ratio is new over old data time (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_gpu_bench import run_bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "data_path_bench.py"
SHAPES = ["digits 8x8x1, 17 levels", "MNIST 28x28x1, 256 levels"]


def percent(cell: str) -> float:
    return float(cell.removesuffix("%")) / 100


def test_quick_bench_prints_old_and_new_data_path_shares_for_both_shapes() -> None:
    rows = run_bench(sys.executable, str(BENCH), "--quick")
    assert [row[0] for row in rows] == SHAPES
    for shape, model, batch, steps, old_ms, new_ms, step_ms, old, new, ratio, goal in rows:
        assert (model, batch, steps) == ("pixelcnn", "64", "6"), shape
        assert float(old_ms) > 0 and float(new_ms) > 0 and float(step_ms) > 0
        assert 0 < percent(old) < 1 and 0 < percent(new) < 1
        assert float(ratio) == pytest.approx(float(new_ms) / float(old_ms), abs=0.01)
        assert goal in ("yes", "NO")
