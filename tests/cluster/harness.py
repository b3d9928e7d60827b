"""genfleet's services on the hosts of a `Network`, started as docker/compose.yaml starts them.

    RedisHost       redis-server, append-only file and a password, on <host>:6379
    RayHead         `ray start --head`, 0 CPUs; GCS :6379, Ray Client :10001, dashboard :8265
    RayWorker       `ray start --address=<head>:6379` with a few CPUs; may join at any time
    DispatcherHost  `genfleet dispatcher`, a Ray Client of the head (ray://<head>:10001)
    Cluster         the network, its shared folders and secrets, and the services on it

Ray's token auth is on everywhere: RAY_AUTH_MODE=token and one random RAY_AUTH_TOKEN. Each
service's `start` waits until it serves and may be called again after `host.kill_all()`, on
the same host (Redis restarts on its append-only file). Every node keeps its own Ray temp dir
on its host's folder, short, because Ray's unix socket paths may not exceed ~107 bytes.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs.queue import JobQueue
from jobs.records import JobRecord
from jobs.run_storage import RunStorage
from jobs.store import JobStore
from tests.cluster.network import Host, Network, ServiceExited, tcp_open, wait_until
from tests.redis_fixtures import redis_executable

log = logging.getLogger("tests.cluster")

REDIS_OCTET, HEAD_OCTET = 10, 20
PREFIX = "genfleet"  # GENFLEET_PREFIX's default: every host uses it
REDIS_PORT = 6379
GCS_PORT = 6379
CLIENT_SERVER_PORT = 10001
DASHBOARD_PORT = 8265
STATE_API_SECONDS = 10.0
AGENT_LISTEN_PORT, AGENT_GRPC_PORT, RUNTIME_ENV_AGENT_PORT = 52365, 52366, 52367
METRICS_EXPORT_PORT = 52368
OBJECT_STORE_BYTES = 100 * 2**20  # Ray refuses less than 75 MiB; the machine has 2 cores
START_SECONDS = 120.0  # a Ray node on a busy 2-core machine takes 10-40 s
NODE_START_ATTEMPTS = 3
# The GCS marks a node dead after 3 failed health checks 1 s apart (Ray's default: 5, 3 s
# apart, 10 s timeout), so that a killed worker host is gone in seconds, not ~30 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "5000",
    "RAY_health_check_failure_threshold": "3",
}
RETRY_NICENESS = -10  # `nice` of a node's retried start (root may raise its priority)
# An error in a Ray log: C++ "[2026-12-01 22:37:49,043 C 24622 24622]", Python "\tERROR ".
RAY_ERROR_LINE = re.compile(r"^\[\S+ \S+ [CEF] \d+ \d+\]|\t(ERROR|CRITICAL) ")
LEASE_SECONDS = 6.0
POLL_SECONDS = 0.5
# `ray status`: "Active:" then one " 1 node_<id>" line per alive node; "0.0/4.0 CPU" in use.
STATUS_NODE = re.compile(r"^\s*1 node_[0-9a-f]+\s*$")
STATUS_CPUS = re.compile(r"^\s*[\d.]+/([\d.]+) CPU\b")


@dataclass
class RedisHost:
    host: Host
    password: str
    appendfsync: str = "everysec"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host.address}:{REDIS_PORT}/0"

    def start(self) -> None:
        folder = self.host.folder / "redis"
        folder.mkdir(exist_ok=True)
        command = [
            redis_executable(),
            "--bind", self.host.address,
            "--port", str(REDIS_PORT),
            "--requirepass", self.password,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--maxmemory", "1gb",
            "--maxmemory-policy", "noeviction",  # as compose: a full Redis refuses writes
            "--save", "",
            "--dir", str(folder),
        ]  # fmt: skip
        process = self.host.spawn(command, "redis")
        wait_until(
            self.answers, 15, "redis-server answering", lambda: self.host.log_tail("redis"), process
        )

    def client(self) -> redis.Redis:
        """A client from the test process; no silent retries, so a dead server shows at once."""
        return redis.Redis(
            host=self.host.address,
            port=REDIS_PORT,
            password=self.password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    cpus: float
    is_head: bool


@dataclass(frozen=True)
class RayStatus:
    """What `ray status` printed: alive nodes and total CPUs."""

    active_nodes: int
    total_cpus: float
    text: str


def parse_ray_status(text: str) -> RayStatus:
    lines = text.splitlines()
    active = lines[lines.index("Active:") + 1 : lines.index("Pending:")]
    cpus = [float(match[1]) for line in lines if (match := STATUS_CPUS.match(line))]
    return RayStatus(sum(bool(STATUS_NODE.match(line)) for line in active), sum(cpus), text)


@dataclass
class RayHead:
    host: Host
    token: str

    @property
    def gcs_address(self) -> str:
        return f"{self.host.address}:{GCS_PORT}"

    @property
    def client_address(self) -> str:
        return f"ray://{self.host.address}:{CLIENT_SERVER_PORT}"

    def auth_env(self) -> dict[str, str]:
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def start(self) -> None:
        command = [
            *ray_start(self.host),
            "--head",
            f"--port={GCS_PORT}",
            f"--ray-client-server-port={CLIENT_SERVER_PORT}",
            "--num-cpus=0",
            "--num-gpus=0",
            "--dashboard-host=0.0.0.0",  # dispatchers on other hosts read its State API
            f"--dashboard-port={DASHBOARD_PORT}",
        ]
        env = {
            **self.auth_env(),
            # As compose: the client proxy forks while gRPC threads run (ray-project/ray#63202).
            "GRPC_ENABLE_FORK_SUPPORT": "false",
            **FAST_HEALTH_CHECKS,
        }
        start_ray_node(
            self.host,
            command,
            env,
            lambda: self.nodes_on(self.host) and tcp_open(self.host.address, CLIENT_SERVER_PORT),
        )

    def state(self, resource: str) -> list[dict[str, Any]] | None:
        """`ray list <resource>` (nodes, actors, placement_groups...) from the dashboard's State
        API, with the token, as an operator's CLI reads it; None while it does not answer."""
        request = urllib.request.Request(
            f"http://{self.host.address}:{DASHBOARD_PORT}/api/v0/{resource}?limit=10000&detail=1",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=STATE_API_SECONDS) as response:
                return json.load(response)["data"]["result"]["result"]
        except (OSError, ValueError):  # URLError and HTTPError are OSErrors
            return None

    def alive_nodes(self) -> list[RayNode] | None:
        nodes = self.state("nodes")
        if nodes is None:
            return None
        return [
            RayNode(
                node["node_id"],
                node["node_ip"],
                node.get("resources_total", {}).get("CPU", 0.0),
                bool(node.get("is_head_node")),
            )
            for node in nodes
            if node.get("state") == "ALIVE"
        ]

    def nodes_on(self, host: Host) -> list[RayNode]:
        """The alive nodes at `host`'s address: a node killed there counts as alive until the
        GCS's health checks fail, and its replacement may have joined already."""
        return [node for node in self.alive_nodes() or [] if node.address == host.address]

    def wait_until_dead(self, node_ids: set[str | None]) -> None:
        """Killed nodes count as alive until the GCS's health checks fail them (~15 s)."""

        def all_dead() -> bool:
            nodes = self.alive_nodes()
            return nodes is not None and not node_ids & {node.node_id for node in nodes}

        wait_until(
            all_dead,
            START_SECONDS,
            f"Ray nodes {node_ids} marked dead",
            lambda: f"alive: {self.alive_nodes()}",
        )

    def status(self) -> RayStatus:
        """`ray status`, run on the head as an operator would; Ray's CLI needs the token too."""
        command = ["ray", "status", f"--address={self.gcs_address}"]
        return parse_ray_status(self.host.run(command, self.auth_env()).stdout)

    def status_when(self, predicate: Callable[[RayStatus], bool], timeout: float) -> RayStatus:
        """The first `status()` that satisfies `predicate`, else the last one after `timeout`
        s: `ray status` reads the autoscaler's report, which trails a join by a few seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(status := self.status()) and time.monotonic() < deadline:
            time.sleep(1.0)
        return status


@dataclass
class RayWorker:
    host: Host
    head: RayHead
    cpus: int = 2
    node_id: str | None = None  # once started

    def start(self) -> None:
        command = [
            *ray_start(self.host),
            f"--address={self.head.gcs_address}",
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
        ]
        earlier = {node.node_id for node in self.head.nodes_on(self.host)}

        def joined() -> bool:
            fresh = [n for n in self.head.nodes_on(self.host) if n.node_id not in earlier]
            self.node_id = fresh[0].node_id if fresh else None
            return bool(fresh)

        start_ray_node(self.host, command, self.head.auth_env(), joined)


def start_ray_node(
    host: Host, command: list[str], env: dict[str, str], joined: Callable[[], object]
) -> None:
    """Start a Ray node on `host` and wait until `joined()`.

    A new raylet aborts unless its dashboard agent writes its HTTP port file within 15 s,
    hardcoded in Ray (ray/util/port_persistence.h; no RAY_ setting changes it), and the agent
    imports every dashboard module first: ~3 s of CPU, which took over 15 s, attempt after
    attempt, while other tests loaded this 2-core machine (load 15-35). The port is fixed
    (AGENT_LISTEN_PORT), so the harness writes that file for the agent as soon as the raylet
    is up (`write_agent_port_file`). Should `ray start` still exit (it gives the node 30 s to
    register), the node is started again, up to NODE_START_ATTEMPTS times, the retries at a
    higher CPU priority (RETRY_NICENESS; Ray's task workers add their +15 to it).
    """
    started = time.monotonic()
    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        niceness = ["nice", "-n", str(RETRY_NICENESS)] if attempt > 1 else []
        process = host.spawn([*niceness, *command], "ray", env)
        try:
            wait_until(
                lambda: write_agent_port_file(host) and joined(),
                START_SECONDS,
                f"Ray node on {host.name}",
                lambda: ray_logs(host),
                process,
            )
            took = time.monotonic() - started
            log.info("Ray node on %s up in %.1f s (attempt %d)", host.name, took, attempt)
            return
        except ServiceExited:
            log.warning("Ray node on %s exited during start (attempt %d)", host.name, attempt)
            host.kill_all()  # whatever of the node it had started
            if attempt == NODE_START_ATTEMPTS:
                raise


def write_agent_port_file(host: Host) -> bool:
    """Write the dashboard agent's port file for the raylet on `host`; whether it is there.

    The raylet's command line names the file: <session_dir>/dashboard_agent_listen_port_<node
    id>. Written whole, then renamed, so that the raylet never reads half of it; the agent
    writes the same port there again once it is up.
    """
    for pid in host.pids():
        try:
            argv = psutil.Process(pid).cmdline()
        except psutil.Error:  # it exited meanwhile
            continue
        if argv and argv[0].endswith("/raylet"):
            flags = dict(arg[2:].split("=", 1) for arg in argv[1:] if "=" in arg)
            folder = Path(flags["session_dir"])
            port_file = folder / f"dashboard_agent_listen_port_{flags['node_id']}"
            if not port_file.exists():
                partial = folder / f".{port_file.name}.harness"
                partial.write_text(str(AGENT_LISTEN_PORT))
                partial.replace(port_file)
            return True
    return False


def ray_logs(host: Host, lines: int = 15) -> str:
    """The tail of `ray start`'s output and the last errors in the node's own logs."""
    tails = [host.log_tail("ray", lines)]
    logs = host.folder / "ray" / "session_latest" / "logs"
    for path in sorted(logs.glob("*")) if logs.exists() else []:
        text = path.read_text(errors="replace").splitlines() if path.is_file() else []
        errors = [line for line in text if RAY_ERROR_LINE.search(line)]
        if errors:
            tails.append(f"--- {host.name} {path.name} ---\n" + "\n".join(errors[-lines:]))
    return "\n".join(tails)


def ray_start(host: Host) -> list[str]:
    """`ray start` in the foreground (so its pid is the node's) with small, private state.

    Fixed agent ports (each host has its own): ports the agents choose reach the raylet in
    files it waits 15 s for, which a busy machine missed (see `start_ray_node`). The dashboard
    agent's HTTP port file it waits for regardless; the harness writes that one.
    """
    return [
        "ray",
        "start",
        "--block",
        f"--node-ip-address={host.address}",
        f"--temp-dir={host.folder / 'ray'}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--dashboard-agent-listen-port={AGENT_LISTEN_PORT}",
        f"--dashboard-agent-grpc-port={AGENT_GRPC_PORT}",
        f"--runtime-env-agent-port={RUNTIME_ENV_AGENT_PORT}",
        f"--metrics-export-port={METRICS_EXPORT_PORT}",
        "--disable-usage-stats",
    ]


@dataclass(frozen=True)
class SharedPaths:
    """Folders every host mounts at the same path, as compose's `storage` and `data` volumes."""

    storage: Path
    data: Path


def genfleet_env(host: Host, redis_host: RedisHost, shared: SharedPaths) -> dict[str, str]:
    """What a `genfleet` command on `host` reads: compose's settings, its own GENFLEET_HOME."""
    return {
        "GENFLEET_REDIS_URL": redis_host.url,
        "GENFLEET_STORAGE": str(shared.storage),
        "GENFLEET_DATA_DIR": str(shared.data),
        "GENFLEET_HOME": str(host.folder / "genfleet"),
    }


@dataclass
class DispatcherHost:
    host: Host
    redis: RedisHost
    head: RayHead
    shared: SharedPaths
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    dispatcher_id: str | None = None  # "<host>-<pid>", as the dispatcher names itself

    def start(self, store: JobStore) -> str:
        """Start `genfleet dispatcher`; return its id once it has published a status to `store`."""
        command = [
            "genfleet",
            "dispatcher",
            f"--lease-seconds={self.lease_seconds}",
            f"--poll-seconds={self.poll_seconds}",
        ]
        env = {
            **self.head.auth_env(),
            **genfleet_env(self.host, self.redis, self.shared),
            "GENFLEET_RAY_ADDRESS": self.head.client_address,  # a Ray Client, as compose's
        }
        started = time.monotonic()
        process = self.host.spawn(command, "dispatcher", env)
        dispatcher_id = f"{self.host.name}-{process.pid}"
        wait_until(
            lambda: dispatcher_id in {s["dispatcher"] for s in store.dispatcher_statuses()},
            START_SECONDS,
            f"dispatcher {dispatcher_id} publishing its status",
            lambda: self.host.log_tail("dispatcher"),
            process,
        )
        log.info("dispatcher %s up in %.1f s", dispatcher_id, time.monotonic() - started)
        self.dispatcher_id = dispatcher_id
        return dispatcher_id


# Roles of the hosts that come and go: the first letter of their names, their addresses.
ROLES = {
    "worker": ("w", range(31, 40)),
    "dispatcher": ("d", range(41, 50)),
    "client": ("c", range(51, 60)),  # runs `genfleet` commands, as a laptop would
}


@dataclass
class Cluster:
    """A network with a Redis host and a Ray head; workers, dispatchers and clients come and go.

    `reset` brings it back to that: it removes every other host, starts Redis or the head
    again if a test killed them, heals every cut and empties Redis.
    """

    network: Network
    redis: RedisHost = field(init=False)
    head: RayHead = field(init=False)
    shared: SharedPaths = field(init=False)
    workers: list[RayWorker] = field(default_factory=list)
    dispatchers: list[DispatcherHost] = field(default_factory=list)
    _made: dict[str, int] = field(default_factory=dict)  # hosts made so far, by role

    def __post_init__(self) -> None:
        folder = self.network.folder / "shared"
        self.shared = SharedPaths(folder / "storage", folder / "data")
        for path in (self.shared.storage, self.shared.data):
            path.mkdir(parents=True, exist_ok=True)
        redis_host = self.network.add_host("redis", REDIS_OCTET)
        self.redis = RedisHost(redis_host, secrets.token_hex(16))
        self.head = RayHead(self.network.add_host("head", HEAD_OCTET), secrets.token_hex(32))

    def start(self) -> None:
        self.redis.start()
        self.head.start()

    def queue(self) -> JobQueue:
        return JobQueue(self.redis.client(), PREFIX)

    def store(self) -> JobStore:
        return JobStore(self.redis.client(), PREFIX, RunStorage(str(self.shared.storage)))

    def add_host(self, role: str) -> Host:
        """A bare host of `role`: the next `<letter><n>` (names are never reused, so a
        replacement starts with empty logs and Ray state) on the role's first free address."""
        letter, octets = ROLES[role]
        taken = {host.address for host in self.network.hosts.values()}
        octet = next((o for o in octets if self.network.address(o) not in taken), None)
        if octet is None:
            raise RuntimeError(f"no free address for another {role} host in {octets}")
        self._made[role] = self._made.get(role, 0) + 1
        return self.network.add_host(f"{letter}{self._made[role]}", octet)

    def add_worker(self, cpus: int = 2) -> RayWorker:
        worker = RayWorker(self.add_host("worker"), self.head, cpus)
        self.workers.append(worker)
        worker.start()
        return worker

    def add_dispatcher(self, lease_seconds: float = LEASE_SECONDS) -> DispatcherHost:
        host = self.add_host("dispatcher")
        dispatcher = DispatcherHost(host, self.redis, self.head, self.shared, lease_seconds)
        self.dispatchers.append(dispatcher)
        dispatcher.start(self.store())
        return dispatcher

    def genfleet(self, host: Host, *args: str) -> str:
        """Run `genfleet ARGS` on `host` with the cluster's settings; return its stdout."""
        env = genfleet_env(host, self.redis, self.shared)
        return host.run(["genfleet", *args], env, timeout=START_SECONDS).stdout

    def remove(self, host: Host) -> None:
        """Take a host off the network for good, every process on it killed."""
        self.workers = [w for w in self.workers if w.host is not host]
        self.dispatchers = [d for d in self.dispatchers if d.host is not host]
        self.network.remove_host(host)

    def reset(self) -> None:
        others = [host for host in self.network.hosts.values() if host not in self._base_hosts()]
        removed_nodes = {worker.node_id for worker in self.workers}
        for host in others:
            host.kill_all()  # first: a dead node's closed ports fail the GCS's checks at once
        for host in self._base_hosts():
            host.heal()
        if not self.redis.answers():
            self.redis.host.kill_all()
            self.redis.start()
        if self.head.nodes_on(self.head.host):
            self.head.wait_until_dead(removed_nodes)
        else:
            self.head.host.kill_all()
            self.head.start()  # a new GCS: it never knew the removed nodes
        for host in others:
            self.remove(host)
        with self.redis.client() as client:
            client.flushdb()

    def _base_hosts(self) -> list[Host]:
        return [self.redis.host, self.head.host]

    def wait_final(self, job_id: str, timeout: float) -> JobRecord:
        store = self.store()
        started = time.monotonic()
        while not (record := store.get(job_id)).status.is_final:
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"job {job_id} still {record.status} after {timeout} s\n{self.logs()}"
                )
            time.sleep(0.5)
        log.info("job %s %s after %.1f s", job_id, record.status, time.monotonic() - started)
        return record

    def logs(self) -> str:
        """The tails of every service's log, for a failing test's message."""
        tails = [self.redis.host.log_tail("redis"), self.head.host.log_tail("ray")]
        tails += [ray_logs(worker.host) for worker in self.workers]
        tails += [d.host.log_tail("dispatcher") for d in self.dispatchers]
        return "\n".join(tails)
