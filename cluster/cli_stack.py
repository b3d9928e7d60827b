"""`genfleet dispatcher`, `genfleet dashboard` and `genfleet up`: the long-running services."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from cluster.cli_errors import UsageError, stderr
from jobs.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"
DEMO_SPECS = ("demo_pixelcnn_digits.yaml", "demo_sweep_digits.yaml")


def register(subcommands: argparse._SubParsersAction) -> None:
    # `worker`, its old name, still starts one: deployments written for it keep working.
    command = subcommands.add_parser(
        "dispatcher", aliases=["worker"], help="run a dispatcher: drain the queue onto Ray"
    )
    _ray_address_option(command)
    command.add_argument("--lease-seconds", type=float, default=30.0)
    command.add_argument("--poll-seconds", type=float, default=0.5)
    command.set_defaults(handler=run_dispatcher)

    command = subcommands.add_parser("dashboard", help="serve the Streamlit dashboard")
    command.add_argument("--address", help="bind address (default 127.0.0.1)")
    command.add_argument("--port", type=int, help="port (default 8501)")
    command.set_defaults(handler=dashboard)

    command = subcommands.add_parser(
        "up", help="start Redis, Ray, a dispatcher and the dashboard here; Ctrl-C stops all"
    )
    _ray_address_option(command)
    command.add_argument("--demo", action="store_true", help="also submit a demo job and sweep")
    command.add_argument("--no-dashboard", action="store_true")
    command.set_defaults(handler=up)


def _ray_address_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ray-address", help="existing Ray cluster (default: GENFLEET_RAY_ADDRESS, else local)"
    )


def _stop_on_signals() -> threading.Event:
    """Ctrl-C or SIGTERM asks the loop to stop cleanly.

    Call it after `ray.init`, which installs its own SIGTERM handler that exits at once.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        stderr.print(f"stopping ({signal.Signals(signum).name})...")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _dispatcher(settings: Settings, args: argparse.Namespace) -> tuple[Any, str | None]:
    from cluster.cli_jobs import open_client
    from cluster.dispatcher import Dispatcher
    from cluster.ray_runtime import connect_ray

    client = open_client()
    ray_dashboard = connect_ray(args.ray_address or settings.ray_address)
    lease = getattr(args, "lease_seconds", 30.0)
    poll = getattr(args, "poll_seconds", 0.5)
    dispatcher = Dispatcher(
        client.queue, client.store, settings, lease_seconds=lease, poll_seconds=poll
    )
    return dispatcher, ray_dashboard


def run_dispatcher(args: argparse.Namespace) -> int:
    # Operators read why a run stopped or a lease went (cluster/dispatcher.py) in this output.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    dispatcher, _ = _dispatcher(settings, args)
    stop = _stop_on_signals()
    stderr.print(f"dispatcher {dispatcher.dispatcher_id} draining the queue; Ctrl-C to stop")
    dispatcher.run(stop)
    return 0


def dashboard(args: argparse.Namespace) -> int:
    from dashboard.launch import run_dashboard

    return run_dashboard(args.address, args.port)


def up(args: argparse.Namespace) -> int:
    import ray

    from cluster.cli_jobs import open_client
    from dashboard.launch import sigterm_interrupts, stop_dashboard
    from jobs.redis_server import describe_url, embedded_server, stop_embedded

    settings = Settings.from_env(direct_runs=True)  # warm starts on the one-machine stack
    # Until the dispatcher loop takes the signals over, Ctrl-C and SIGTERM interrupt the start,
    # and `stack` stops what `up` has started so far, the newest first.
    with sigterm_interrupts(), ExitStack() as stack:
        if (
            not settings.redis_url
            and embedded_server(settings.home, settings.redis_maxmemory).started
        ):
            # Only a server this run started: one that already ran serves other commands.
            stack.callback(stop_embedded, settings.home)
        client = open_client()
        stderr.print(f"redis      {describe_url(client.redis)}")
        # The dashboard starts first: a bind it refuses stops `up` before Ray starts for nothing.
        if not args.no_dashboard:
            stack.callback(stop_dashboard, _start_dashboard(settings))
        stack.callback(ray.shutdown)
        dispatcher, ray_dashboard = _dispatcher(settings, args)
        stop = _stop_on_signals()
        stderr.print(f"ray        {_as_url(ray_dashboard) or 'connected'}")
        # Ray's own CLI needs to be told that this cluster checks tokens (README, "Ray's tools").
        gcs = ray.get_runtime_context().gcs_address
        stderr.print(f"ray tools  RAY_AUTH_MODE=token ray status --address {gcs}")
        if not args.no_dashboard:
            stderr.print(
                f"dashboard  http://{settings.dashboard_address}:{settings.dashboard_port}"
            )
        if args.demo:
            _submit_demo_jobs(client)
        stderr.print(
            "submit with: genfleet submit jobs/examples/pixelcnn_digits.yaml; Ctrl-C stops all"
        )
        dispatcher.run(stop)
    return 0


def _as_url(address: str | None) -> str | None:
    """Ray reports its dashboard as host:port; people click URLs."""
    if address and "://" not in address:
        return f"http://{address}"
    return address


def _start_dashboard(settings: Settings) -> subprocess.Popen[bytes]:
    from dashboard.launch import UnsafeBindError, launch_dashboard

    address, port = settings.dashboard_address, settings.dashboard_port
    if not _port_is_free(address, port):
        raise UsageError(
            f"GENFLEET_DASHBOARD_PORT: {port} on {address} is in use; choose another port "
            "or start with --no-dashboard"
        )
    try:
        return launch_dashboard(address, port, settings.dashboard_password)
    except UnsafeBindError as exc:
        raise UsageError(str(exc)) from None


def _port_is_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _submit_demo_jobs(client: Any) -> None:
    for name in DEMO_SPECS:
        # A fixed key: a second `up --demo` on the same Redis queues no second copy.
        job = client.submit(EXAMPLES / name, idempotency_key=f"demo-{name}")
        stderr.print(f"demo job   {job.id} ({name})")
