"""`bench/footprint_bench.py --quick --bytes-only` runs end to end, so the bench cannot rot, and
its byte counts (not times) show images out of Redis: the CIFAR-shaped job keeps under 1 MiB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_recipe_bench import table_rows

BENCH = Path(__file__).resolve().parents[1] / "bench" / "footprint_bench.py"
COMMAND = [sys.executable, str(BENCH), "--quick", "--bytes-only"]  # from any folder
SHAPES = ["digits 8x8x1", "MNIST 28x28x1", "CIFAR 32x32x3"]
HANG_SECONDS = 300  # about 15 s on a loaded 2-core machine; a hang must not stall the suite


def test_quick_footprint_bench_keeps_the_cifar_shaped_job_under_a_mebibyte_of_redis() -> None:
    result = subprocess.run(
        COMMAND, capture_output=True, text=True, timeout=HANG_SECONDS, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row[0]: row for row in table_rows(result.stdout)}
    assert list(rows) == SHAPES
    for shape, (_, before, after, ratio, stored, *_) in rows.items():
        assert 0 < float(after) < float(before) and 0 < float(ratio) < 1, shape
        assert float(stored) > 0, f"{shape}: no image reached the runs' storage"
    _, before, after, *_, goal = rows["CIFAR 32x32x3"]
    assert float(after) < 1.0 and goal == "yes"
    assert float(after) < float(before) / 10  # the PNGs were nearly all of the old footprint
