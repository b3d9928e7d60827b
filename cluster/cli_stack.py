"""`genfleet worker`, `genfleet dashboard` and `genfleet up`: the long-running services."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from cluster.cli_errors import stderr
from jobs.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"
DEMO_SPECS = ("demo_pixelcnn_digits.yaml", "demo_sweep_digits.yaml")


def register(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser("worker", help="run a dispatcher: drain the queue onto Ray")
    _ray_address_option(command)
    command.add_argument("--lease-seconds", type=float, default=30.0)
    command.add_argument("--poll-seconds", type=float, default=0.5)
    command.set_defaults(handler=worker)

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
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        stderr.print(f"stopping ({signal.Signals(signum).name})...")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _dispatcher(settings: Settings, args: argparse.Namespace) -> tuple[Any, str | None]:
    from cluster.cli_jobs import open_queue
    from cluster.dispatcher import Dispatcher
    from cluster.ray_runtime import connect_ray

    queue, store = open_queue()
    ray_dashboard = connect_ray(args.ray_address or settings.ray_address)
    lease = getattr(args, "lease_seconds", 30.0)
    poll = getattr(args, "poll_seconds", 0.5)
    return Dispatcher(queue, store, settings, lease_seconds=lease, poll_seconds=poll), ray_dashboard


def worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    stop = _stop_on_signals()
    dispatcher, _ = _dispatcher(settings, args)
    stderr.print(f"dispatcher {dispatcher.worker_id} draining the queue; Ctrl-C to stop")
    dispatcher.run(stop)
    return 0


def dashboard(args: argparse.Namespace) -> int:
    from dashboard.launch import run_dashboard

    return run_dashboard(args.address, args.port)


def up(args: argparse.Namespace) -> int:
    import ray

    from cluster.cli_jobs import open_queue, read_spec
    from dashboard.launch import launch_dashboard
    from jobs.redis_server import describe_url

    settings = Settings.from_env()
    stop = _stop_on_signals()
    dispatcher = _dispatcher(settings, args, include_ray_dashboard=True)
    queue, _ = open_queue()
    stderr.print(f"redis      {describe_url(queue.redis)}")
    ray_dashboard = (
        ray.get_runtime_context().dashboard_url if hasattr(ray, "get_runtime_context") else None
    )
    stderr.print(f"ray        {ray_dashboard or 'connected'} (token authentication on)")
    process = None
    if not args.no_dashboard:
        address, port = settings.dashboard_address, settings.dashboard_port
        process = launch_dashboard(address, port, settings.dashboard_password)
        stderr.print(f"dashboard  http://{address}:{port}")
    if args.demo:
        for name in DEMO_SPECS:
            job_id = queue.submit(read_spec(EXAMPLES / name), idempotency_key=f"demo-{name}")
            stderr.print(f"demo job   {job_id} ({name})")
    stderr.print(
        "submit with: genfleet submit jobs/examples/pixelcnn_digits.yaml; Ctrl-C stops all"
    )
    try:
        dispatcher.run(stop)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        ray.shutdown()
    return 0
