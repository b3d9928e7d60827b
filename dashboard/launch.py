"""Start the Streamlit dashboard as a subprocess (`genfleet dashboard`), and stop it with us.

The dashboard can cancel and submit jobs, so it never listens beyond loopback without a
password: anyone who can reach the port would otherwise own the queue.

Ctrl-C or SIGTERM (`kill`, systemd, a supervisor) stops the command that started Streamlit
only once Streamlit has stopped too: left running, it would keep serving the port.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from jobs.settings import Settings

APP_SCRIPT = Path(__file__).with_name("app.py")
PROJECT_ROOT = APP_SCRIPT.parents[1]
PASSWORD_VARIABLE = "GENFLEET_DASHBOARD_PASSWORD"
UPLOAD_LIMIT_MB = 1  # a spec is at most GENFLEET_MAX_SPEC_BYTES (64 KiB by default)
STOP_TIMEOUT_SECONDS = 10.0  # Streamlit stops within a second or two; a hung one is killed


class UnsafeBindError(ValueError):
    """The dashboard was asked to listen beyond loopback without a password."""


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def streamlit_command(address: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_SCRIPT),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.enableXsrfProtection",
        "true",
        "--server.maxUploadSize",
        str(UPLOAD_LIMIT_MB),
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
        "--browser.gatherUsageStats",
        "false",
    ]


def launch_dashboard(
    address: str,
    port: int,
    password: str | None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Run `streamlit run dashboard/app.py` bound to `address:port`; raise UnsafeBindError."""
    if not password and not is_loopback(address):
        raise UnsafeBindError(
            f"refusing to serve the dashboard on {address}: it is not a loopback address and no "
            f"password is set; set {PASSWORD_VARIABLE} or use --address 127.0.0.1"
        )
    env = {**os.environ, **(extra_env or {})}
    env.pop(PASSWORD_VARIABLE, None)
    if password:  # in the environment, not argv, so `ps` does not show it
        env[PASSWORD_VARIABLE] = password
    # The app imports `dashboard.*`; a source checkout that is not pip-installed still works.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(streamlit_command(address, port), env=env)


def run_dashboard(address: str | None = None, port: int | None = None) -> int:
    """What `genfleet dashboard [--address A] [--port P]` runs; returns the exit code."""
    settings = Settings.from_env()
    with sigterm_interrupts():
        try:
            process = launch_dashboard(
                address or settings.dashboard_address,
                port or settings.dashboard_port,
                settings.dashboard_password,
            )
        except UnsafeBindError as exc:
            print(f"genfleet dashboard: {exc}", file=sys.stderr)
            return 2
        try:
            return process.wait()
        except KeyboardInterrupt:
            return stop_dashboard(process)


def stop_dashboard(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM the dashboard, wait for it, kill it after STOP_TIMEOUT_SECONDS; its exit code,
    0 for a stop by that SIGTERM: Streamlit's uvicorn, once it has shut down, raises the
    signal it caught again, so a clean stop may end by the signal itself."""
    process.terminate()
    try:
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
    return 0 if code == -signal.SIGTERM else code


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that the code that started a child
    stops it; by default Python dies at once on SIGTERM and leaves its children running."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt
