"""Processes genfleet starts stop with it: SIGTERM (`kill`, systemd, a supervisor) or Ctrl-C
stops `genfleet dashboard` and `genfleet up` only once their Streamlit child has stopped, and
`up` leaves running the embedded Redis it did not start. Real processes, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dashboard import launch
from dashboard.launch import stop_dashboard
from jobs.redis_server import embedded_server, stop_embedded
from tests.redis_fixtures import RedisProcess, free_port

GENFLEET = Path(sys.executable).with_name("genfleet")
SERVE_SECONDS = 60  # Streamlit takes a few seconds to listen on a busy 2-core machine
UP_SECONDS = 180  # Redis, Ray and Streamlit
STOP_SECONDS = 30


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_streamlit(parent: subprocess.Popen[bytes], port: int) -> psutil.Process:
    """`parent`'s Streamlit child, once it listens on `port`."""
    deadline = time.monotonic() + SERVE_SECONDS
    while not port_open(port):
        assert parent.poll() is None, f"genfleet exited {parent.returncode} before serving"
        assert time.monotonic() < deadline, f"nothing listens on {port} after {SERVE_SECONDS} s"
        time.sleep(0.2)
    children = psutil.Process(parent.pid).children(recursive=True)
    streamlit = [child for child in children if "streamlit" in " ".join(child.cmdline())]
    assert len(streamlit) == 1, [child.cmdline() for child in children]
    return streamlit[0]


@contextlib.contextmanager
def genfleet(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`genfleet ARGS` in its own process group, which is SIGKILLed after: what the command
    left behind (the bug under test) goes with it."""
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(GENFLEET), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENFLEET_")}
    return env | {"GENFLEET_HOME": str(home)} | settings


def test_dashboard_stopped_with_sigterm_stops_streamlit_and_frees_its_port(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    port = free_port()
    env = clean_env(tmp_path / "home", GENFLEET_REDIS_URL=redis_server.url)
    log = tmp_path / "dashboard.log"
    with genfleet(["dashboard", "--port", str(port)], env, log) as dashboard:
        streamlit = wait_for_streamlit(dashboard, port)

        dashboard.send_signal(signal.SIGTERM)

        assert dashboard.wait(timeout=STOP_SECONDS) == 0, log.read_text()[-3000:]
        assert not is_running(streamlit.pid), "Streamlit must stop with `genfleet dashboard`"
        assert not port_open(port)
        assert "Traceback" not in log.read_text()


def test_stop_dashboard_kills_a_child_that_ignores_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launch, "STOP_TIMEOUT_SECONDS", 0.5)
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        started = time.monotonic()

        assert stop_dashboard(child) == -signal.SIGKILL

        assert time.monotonic() - started < 5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.ray
def test_up_stopped_with_sigterm_stops_its_dashboard_and_keeps_a_redis_it_did_not_start(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    redis_before = embedded_server(home)  # as another genfleet command would have started it
    port = free_port()
    env = clean_env(home, GENFLEET_DASHBOARD_PORT=str(port))
    log = tmp_path / "up.log"
    try:
        with genfleet(["up"], env, log) as up:
            streamlit = wait_for_streamlit(up, port)
            deadline = time.monotonic() + UP_SECONDS
            while "submit with:" not in log.read_text():  # the dispatcher loop runs
                assert up.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)

            up.send_signal(signal.SIGTERM)

            assert up.wait(timeout=STOP_SECONDS) == 0, log.read_text()[-3000:]
            assert not is_running(streamlit.pid), "Streamlit must stop with `genfleet up`"
            assert not port_open(port)
            assert "Traceback" not in log.read_text()
        redis_after = embedded_server(home)
        assert (redis_after.pid, redis_after.started) == (redis_before.pid, False)
    finally:
        stop_embedded(home)
