"""Dashboard render times: the Jobs page at 1,000 and 10,000 jobs, and a Job page with 100 grids.

    .venv/bin/python bench/dashboard_bench.py                  # 1,000 and 10,000 jobs
    .venv/bin/python bench/dashboard_bench.py --jobs 500 2000  # other sizes, a quick run

Starts the embedded redis-server (`ensure_embedded`) in a temporary GENFLEET_HOME and stops it
at the end. Each size gets its own key prefix, filled through the real queue: every job
submitted, a fifth claimed and completed, a tenth of the rest cancelled. A render is one
AppTest run of the whole app on that page (the script, the store reads, the widgets), after
one warm-up run; the figure is the median of `--repeats` renders. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parents[1]))  # `tests.dashboard_seed`, run from anywhere

from jobs.queue import JobQueue
from jobs.redis_server import connect, ensure_embedded, stop_embedded
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.store import JobStore
from tests import dashboard_seed as seed

APP = Path(__file__).parents[1] / "dashboard" / "app.py"
WORKER = "bench-worker"
GRIDS = 100


def fill(queue: JobQueue, jobs: int) -> None:
    """`jobs` jobs: a fifth succeeded, a tenth of the others cancelled, the rest queued."""
    seed.seed_queued_jobs(queue, jobs, name="bench")
    for _ in range(jobs // 5):
        claimed = queue.claim(WORKER, lease_seconds=600)
        assert claimed is not None
        queue.complete(claimed.lease, {})
    for job_id in queue.queued(limit=jobs // 10):
        queue.cancel(job_id)


def median_render_ms(app: AppTest, repeats: int) -> float:
    app.run()  # warm-up: imports, the first Redis connection, caches
    assert not app.exception, [error.value for error in app.exception]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        app.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def jobs_page_timings(prefix: str, repeats: int) -> dict[str, float]:
    os.environ["GENFLEET_PREFIX"] = prefix
    first = AppTest.from_file(str(APP), default_timeout=120)
    filtered = AppTest.from_file(str(APP), default_timeout=120)
    filtered.session_state["jobs.status"] = "succeeded"
    filtered.session_state["jobs.model"] = "vae"
    last = AppTest.from_file(str(APP), default_timeout=120)
    last.session_state["jobs.page"] = 10**9  # the page clamps this to its last page
    return {
        "Jobs page, first page of 50": median_render_ms(first, repeats),
        "Jobs page, status + model filter": median_render_ms(filtered, repeats),
        "Jobs page, last page": median_render_ms(last, repeats),
        "store.list_jobs alone, first page of 50": list_jobs_ms(prefix, repeats),
    }


def list_jobs_ms(prefix: str, repeats: int) -> float:
    store = JobStore(connect(Settings.from_env()), prefix)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store.list_jobs(offset=0, limit=50)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def job_page_timings(queue: JobQueue, store: JobStore, repeats: int) -> dict[str, float]:
    """A job with GRIDS sample grids: opened with empty image caches, then rerendered."""
    job_id = seed.seed_trained_job(queue, store, name="hundred-grids", epochs=GRIDS)
    cold = []
    for _ in range(repeats):
        app = AppTest.from_file(str(APP), default_timeout=120)
        app.query_params["job"] = job_id
        app.run()
        app.switch_page("views/job.py")
        st.cache_data.clear()  # image caches live in this process; empty them for a cold open
        start = time.perf_counter()
        app.run()
        cold.append(time.perf_counter() - start)
        assert len(app.image) == 1 + 8, "expected the chosen grid and a strip of 8"
    warm = AppTest.from_file(str(APP), default_timeout=120)
    warm.query_params["job"] = job_id
    warm.run()
    warm.switch_page("views/job.py")
    return {
        f"Job page, {GRIDS} grids, cold image cache": statistics.median(cold) * 1000,
        f"Job page, {GRIDS} grids, warm": median_render_ms(warm, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["GENFLEET_HOME"] = home
        for variable in ("GENFLEET_REDIS_URL", "GENFLEET_DASHBOARD_PASSWORD"):
            os.environ.pop(variable, None)
        ensure_embedded(Path(home))
        try:
            client = connect(Settings.from_env())
            by_size = {}
            for jobs in args.jobs:
                prefix = f"bench{jobs}"
                start = time.perf_counter()
                fill(JobQueue(client, prefix), jobs)
                print(f"seeded {jobs:,} jobs in {time.perf_counter() - start:.1f} s", flush=True)
                by_size[jobs] = jobs_page_timings(prefix, args.repeats)
            os.environ["GENFLEET_PREFIX"] = "benchjob"
            job_page = job_page_timings(
                JobQueue(client, "benchjob"),
                JobStore(client, "benchjob", RunStorage(Settings.from_env().storage)),
                args.repeats,
            )
        finally:
            stop_embedded(Path(home))
    sizes = list(by_size)
    print(f"\nMedian of {args.repeats} AppTest renders, in ms\n")
    print("| render | " + " | ".join(f"{size:,} jobs" for size in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name in by_size[sizes[0]]:
        print(f"| {name} | " + " | ".join(f"{by_size[s][name]:.1f}" for s in sizes) + " |")
    print("\n| render | ms |\n|---|---:|")
    for name, milliseconds in job_page.items():
        print(f"| {name} | {milliseconds:.1f} |")


if __name__ == "__main__":
    main()
