"""`genfleet up --demo` as a user starts it: embedded Redis, local Ray, dispatcher, dashboard.

One test, because the stack takes most of a minute to start on two cores: it checks the
printed URLs, the dashboard's HTTP answers, the demo jobs in the queue, the demo PixelCNN job
running to success and the demo sweep's trials training, then Ctrl-C in the middle of the
sweep: a clean stop that takes the dashboard and the embedded Redis `up` started with it and
hands the sweep back to the queue, where the next `up` resumes it (tests/test_processes.py
stops `up` with SIGTERM; tests/test_ray_jobs.py runs sweeps to their end).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from jobs.records import JobRecord, JobStatus
from jobs.redis_server import embedded_server, stop_embedded
from jobs.store import JobStore
from tests.redis_fixtures import free_port

pytestmark = pytest.mark.ray

GENFLEET = Path(sys.executable).with_name("genfleet")
START_SECONDS = 180  # Redis, Ray and Streamlit on a busy 2-core machine
DEMO_JOB_SECONDS = 240
DEMO_SWEEP_SECONDS = 240  # after the job: on 2 cores the sweep waits for the job's CPU
STOP_SECONDS = 60  # the dispatcher stops the sweep's trials, then hands it back
RAY_STATUS_SECONDS = 60
DEMO_JOB_LINE = re.compile(r"^demo job   ([0-9a-f]{12}) \((demo_\w+)\.yaml\)$", re.MULTILINE)


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with nothing configured but a home and a free dashboard port."""
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENFLEET_")}
    env |= {"GENFLEET_HOME": str(home), "GENFLEET_DASHBOARD_PORT": str(free_port())}
    yield env
    stop_embedded(home)  # `up` stops the Redis it started; this is for a failed test


def test_up_demo_serves_the_dashboard_runs_the_demo_job_and_sweep_and_stops_on_ctrl_c(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    port = int(up_env["GENFLEET_DASHBOARD_PORT"])
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        # Its own session, so that a failed test can stop it with everything it started.
        up = subprocess.Popen(
            [str(GENFLEET), "up", "--demo"],
            env=up_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        output = _wait_for_output(up, log_path, "submit with:", START_SECONDS)
        assert f"dashboard  http://127.0.0.1:{port}\n" in output
        assert re.search(r"^redis      redis://127\.0\.0\.1:\d+/0 \(password set\)$", output, re.M)
        assert re.search(r"^ray        http://127\.0\.0\.1:\d+$", output, re.MULTILINE)
        _check_ray_status_sees_the_cluster(output, up_env)
        demo_jobs = dict((name, job_id) for job_id, name in DEMO_JOB_LINE.findall(output))
        assert set(demo_jobs) == {"demo_pixelcnn_digits", "demo_sweep_digits"}

        assert _http_get(f"http://127.0.0.1:{port}/_stcore/health") == (200, b"ok")
        status, page = _http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"<!doctype html>" in page.lower()

        listed = subprocess.run(
            [str(GENFLEET), "list", "--json"], env=up_env, capture_output=True, text=True
        )
        jobs = {job["name"]: job["id"] for job in json.loads(listed.stdout)["jobs"]}
        assert jobs == {
            "demo-pixelcnn": demo_jobs["demo_pixelcnn_digits"],
            "demo-sweep": demo_jobs["demo_sweep_digits"],
        }

        # The server `up` started; embedded_server finds it and starts no second one.
        redis_server = embedded_server(Path(up_env["GENFLEET_HOME"]))
        assert not redis_server.started
        store = JobStore(redis.Redis.from_url(redis_server.url))
        record = _wait_final(store, jobs["demo-pixelcnn"], DEMO_JOB_SECONDS)
        assert record.status == JobStatus.SUCCEEDED, record.last_error
        assert record.progress["epoch"] == 3
        _wait_for_a_trained_trial(store, jobs["demo-sweep"], DEMO_SWEEP_SECONDS)

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=STOP_SECONDS) == 0, log_path.read_text()[-3000:]
        assert not _port_open(port), "the dashboard must stop with `up`"
        assert not _is_running(redis_server.pid), "the Redis `up` started must stop with it"
        assert "Traceback" not in log_path.read_text()

        # The next `up` finds the sweep queued again, its attempt not spent, its trials kept.
        restarted = embedded_server(Path(up_env["GENFLEET_HOME"]))
        assert restarted.started
        store = JobStore(redis.Redis.from_url(restarted.url))
        sweep = store.get(jobs["demo-sweep"])
        assert (sweep.status, sweep.attempts) == (JobStatus.QUEUED, 0), sweep
        assert any("handed back" in event.message for event in store.events(sweep.id))
        assert store.trials(sweep.id)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def _check_ray_status_sees_the_cluster(output: str, env: dict[str, str]) -> None:
    """Ray's own `ray status`, as the line `up` prints says to run it, lists the local node."""
    match = re.search(r"^ray tools  RAY_AUTH_MODE=token ray status --address (\S+)$", output, re.M)
    assert match, output
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli), "status", "--address", match.group(1)]
    deadline = time.monotonic() + RAY_STATUS_SECONDS
    while True:  # Ray's monitor publishes the first status a few seconds after the head starts
        status = subprocess.run(
            command, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        if "Node status" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "Node status" in status.stdout and "CPU" in status.stdout, status.stdout


def _wait_for_a_trained_trial(store: JobStore, sweep_id: str, timeout: float) -> None:
    """Until a trial of the running sweep has reported an epoch's metrics."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(sweep_id)
        assert record.status in (JobStatus.QUEUED, JobStatus.RUNNING), record
        trials = store.trial_ids(sweep_id)
        if record.status is JobStatus.RUNNING and any(store.metrics(sweep_id, t) for t in trials):
            return
        assert time.monotonic() < deadline, (
            f"no trial of {sweep_id} trained an epoch within {timeout} s; logs:\n"
            + "\n".join(store.logs(sweep_id, tail=20))
        )
        time.sleep(1)


def _wait_for_output(
    process: subprocess.Popen[bytes], log_path: Path, marker: str, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while marker not in (output := log_path.read_text()):
        assert process.poll() is None, f"`genfleet up` exited {process.returncode}:\n{output}"
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s:\n{output}"
        time.sleep(0.5)
    return output


def _http_get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    """The first answer the server gives; Streamlit takes a few seconds to listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_final(store: JobStore, job_id: str, timeout: float) -> JobRecord:
    deadline = time.monotonic() + timeout
    while not (record := store.get(job_id)).status.is_final:
        assert time.monotonic() < deadline, (
            f"job {job_id} still {record.status} after {timeout} s; logs:\n"
            + "\n".join(store.logs(job_id, tail=20))
        )
        time.sleep(2)
    return record


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
