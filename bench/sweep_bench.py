"""A sweep's wall time with trials in their own Tune trial actors against one Train run each.

    .venv/bin/python bench/sweep_bench.py          # jobs/examples/pixelcnn_sweep_digits.yaml
    .venv/bin/python bench/sweep_bench.py --quick  # the same sweep with 4 trials of 1 epoch

Starts a local Ray as `genfleet up` does and an embedded Redis in a temporary home, and stops
both at the end. The example sweep (16 trials: 8 samples times a 2-value grid, ASHA) runs
through a dispatcher (a thread, `genfleet dispatcher`'s defaults) twice in this run, one after
the other: its trials trained directly in their trial actors, which Tune reuses
(GENFLEET_DIRECT_RUNS=1, the default), then each trial as a one-worker Ray Train run
(GENFLEET_DIRECT_RUNS=0, as before issue 14). The same seed gives both the same trial configs.
Wall time is submit to the sweep's end; quality is the best trial's metric and its test metric.
Prints markdown; every figure is from this run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import yaml
from ray_bench import bench_settings, open_queue, running_dispatcher  # a sibling script

from cluster.ray_runtime import connect_ray
from jobs.records import JobStatus
from jobs.redis_server import ensure_embedded, stop_embedded
from jobs.spec import validate_spec_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "pixelcnn_sweep_digits.yaml"
TIMEOUT_SECONDS = 1800.0
PATHS = (
    ("trials in their trial actors (GENFLEET_DIRECT_RUNS=1)", True),
    ("a Ray Train run per trial (GENFLEET_DIRECT_RUNS=0)", False),
)


@dataclass(frozen=True)
class SweepRun:
    wall_seconds: float
    trials: int
    best_metric: float
    best_test_metric: float | None


def sweep_spec(quick: bool) -> dict[str, Any]:
    spec = yaml.safe_load(EXAMPLE.read_text())
    if quick:
        spec["sweep"]["num_samples"] = 2  # times the grid's 2 values: 4 trials
        spec["train"]["epochs"] = 1
    return spec


def run_sweep(settings: Any, spec: dict[str, Any]) -> SweepRun:
    queue, store = open_queue(settings)
    with running_dispatcher(queue, store, settings):
        submitted = time.monotonic()
        job_id = queue.submit(validate_spec_dict(spec))
        while not (record := store.get(job_id)).status.is_final:
            if time.monotonic() - submitted > TIMEOUT_SECONDS:
                raise TimeoutError(f"sweep {job_id} still {record.status}")
            time.sleep(0.5)
        wall = time.monotonic() - submitted
    if record.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"sweep {job_id} {record.status}: {record.last_error}")
    result = record.result
    return SweepRun(wall, result["trials"], result["best_metric"], result["best_test_metric"])


def table(runs: dict[str, SweepRun]) -> str:
    lines = [
        "| trials train | wall s | trials | best val bits/dim | its test bits/dim |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        test = "n/a" if run.best_test_metric is None else f"{run.best_test_metric:.3f}"
        lines.append(
            f"| {name} | {run.wall_seconds:.0f} | {run.trials} | {run.best_metric:.3f} | {test} |"
        )
    (direct, _), (train, _) = PATHS
    ratio = runs[direct].wall_seconds / runs[train].wall_seconds
    lines.append("")
    lines.append(f"direct / Ray Train wall time: **{ratio:.2f}** (goal <= 0.5)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials of 1 epoch")
    args = parser.parse_args()
    spec = sweep_spec(args.quick)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    runs: dict[str, SweepRun] = {}
    with tempfile.TemporaryDirectory(prefix="genfleet-sweep-bench-") as work:
        home = Path(work)
        settings = bench_settings(home, ensure_embedded(home))
        try:
            connect_ray(None)
            for name, direct in PATHS:
                runs[name] = run_sweep(replace(settings, direct_runs=direct), spec)
        finally:
            ray.shutdown()
            stop_embedded(home)
    print(
        f"Ray {ray.__version__}, {os.cpu_count()} CPU cores, 1-min load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"bench {time.monotonic() - started:.0f} s"
    )
    print()
    print(f"`{EXAMPLE.name}`{' (quick)' if args.quick else ''}: submit to the sweep's end")
    print()
    print(table(runs))


if __name__ == "__main__":
    main()
