"""`bench/gpu_bench.py --smoke` runs end to end on the CPU, so the GPU bench cannot rot between
the rare runs on a lent GPU machine, and it runs without pydantic, as that machine has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_bench import FULL_PARAMS, SMOKE_PARAMS, VARIANTS
from jobs.model_params import PARAMS_BY_MODEL
from tests.test_recipe_bench import table_rows

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "gpu_bench.py"
HANG_SECONDS = 300  # 15-30 s on a loaded 2-core machine; a hang must not stall the suite
# The bench as the bare GPU machine runs it: `import pydantic` fails there.
WITHOUT_PYDANTIC = (
    "import runpy, sys; sys.modules['pydantic'] = None; "
    f"sys.argv = [{str(BENCH)!r}, *sys.argv[1:]]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_bench(*command: str) -> list[list[str]]:
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_SECONDS, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return table_rows(result.stdout)


def test_smoke_bench_prints_every_model_and_variant_with_consistent_numbers() -> None:
    rows = run_bench(sys.executable, str(BENCH), "--smoke")
    expected = [(model, variant.name) for model in FULL_PARAMS for variant in VARIANTS]
    assert [(row[0], row[1]) for row in rows] == expected
    for model, variant, images_per_s, ratio, memory, gflop, tflop_per_s, mfu in rows:
        baseline = next(float(row[2]) for row in rows if row[:2] == [model, VARIANTS[0].name])
        assert float(images_per_s) > 0, (model, variant)
        assert float(ratio) == pytest.approx(float(images_per_s) / baseline, abs=0.02)
        assert float(gflop) > 0
        assert float(tflop_per_s) == pytest.approx(
            float(gflop) * float(images_per_s) / 1000, abs=1e-3
        )
        assert (memory, mfu) == ("n/a", "unknown peak")  # the CPU has neither
    flops = {(row[0], row[5]) for row in rows}
    assert len(flops) == len(FULL_PARAMS)  # counted once per model, whatever the variant


def test_smoke_bench_builds_and_trains_both_models_without_pydantic() -> None:
    # The GPU machine has torch but no pydantic: the bench needs trainers/ alone.
    rows = run_bench(sys.executable, "-c", WITHOUT_PYDANTIC, "--smoke")
    assert [(row[0], row[1]) for row in rows] == [
        (model, variant.name) for model in FULL_PARAMS for variant in VARIANTS
    ]
    assert all(float(row[2]) > 0 for row in rows)


@pytest.mark.parametrize("sizes", [FULL_PARAMS, SMOKE_PARAMS], ids=["full", "smoke"])
def test_bench_params_set_every_field_and_validate_as_the_models_params(
    sizes: dict[str, dict[str, object]],
) -> None:
    for model, fields in sizes.items():
        params = PARAMS_BY_MODEL[model]
        assert set(fields) == set(params.model_fields), model
        assert params(**fields).model_dump() == fields
