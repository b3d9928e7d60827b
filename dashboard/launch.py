"""Start the Streamlit dashboard as a subprocess (`genfleet dashboard`).

The dashboard can cancel and submit jobs, so it never listens beyond loopback without a
password: anyone who can reach the port would otherwise own the queue.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from jobs.settings import Settings

APP_SCRIPT = Path(__file__).with_name("app.py")
PROJECT_ROOT = APP_SCRIPT.parents[1]
PASSWORD_VARIABLE = "GENFLEET_DASHBOARD_PASSWORD"
UPLOAD_LIMIT_MB = 1  # a spec is at most GENFLEET_MAX_SPEC_BYTES (64 KiB by default)


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
        process.terminate()
        return process.wait()
