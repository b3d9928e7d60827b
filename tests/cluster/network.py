"""Separate hosts on one machine: a Linux network namespace per host, all on one bridge.

A `Network` is a bridge on a /24 of RFC 2544's range for tests (198.18.0.0/24, or the next
free one while another session's network is up), holding .1, and the `Host`s on it. Each host
has its own loopback, address, hostname (a UTS namespace) and ports; its processes share this
machine's file system, as hosts that mount one shared volume would. The test process, in the
root namespace, reaches every host through the bridge. The namespaces have no route beyond
the bridge: nothing is ever sent past these hosts and loopback.

Every name starts with the session's prefix, `gf<pid % 1000>`: namespaces `<prefix>-<host>`,
the bridge `<prefix>br`, the root ends of the veth pairs `<prefix><host>`, files under
/tmp/<prefix>, whose owner.pid names the process that made them. `Network.up` first removes
what a crashed run left under a prefix whose owner is gone, and nothing else; `Network.close`
SIGKILLs every process of every host (found by namespace, so Ray's daemons too), then deletes
the namespaces, the bridge, the FORWARD rule and the files, and finishes even when a step fails.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

import psutil

# RFC 2544's range for tests. A network takes the first /24 of these that no interface here is
# on: 198.18.0.0/24, unless another session's network is up, then 198.18.1.0/24 and so on.
SUBNETS = list(ipaddress.ip_network("198.18.0.0/20").subnets(new_prefix=24))
SUBNET_LOCK = Path("/tmp/gf-subnets.lock")  # held while a network sweeps and takes its subnet
# A prefix is "gf" and 1-3 digits, alone or before a host name (a letter first), "-" or "br".
PREFIX = re.compile(r"^(gf\d{1,3})(?=[a-z-]|$)")
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # <prefix><host> fits Linux's 15-char names
COMMAND_SECONDS = 60.0
KILL_SECONDS = 15.0
# Variables of the test process that would point a host's processes at another cluster.
FOREIGN_VARIABLES = ("RAY_", "GENFLEET_", "PYTEST_", "REDISCLI_")
# Exit 0 when a TCP connection to argv[1]:argv[2] opens within argv[3] seconds.
TCP_PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)


def unavailable_reason() -> str | None:
    """Why this machine cannot build hosts (not root, no `ip netns`), or None when it can."""
    if os.geteuid() != 0:
        return "multi-host tests build network namespaces, which needs root"
    if shutil.which("ip") is None:
        return "multi-host tests need `ip` (apt-get install iproute2)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here"
    return None


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_SECONDS,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


class ServiceExited(RuntimeError):
    """The process that was to serve exited before it did."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    details: Callable[[], str],
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `predicate` until it is true; fail after `timeout` s, or as soon as `process`
    exits, saying what and why."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise ServiceExited(f"{what}: exited {process.returncode} first\n{details()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s\n{details()}")
        time.sleep(0.25)


def tcp_open(address: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the test process (root namespace, through the bridge) connects to address:port."""
    try:
        socket.create_connection((address, port), timeout).close()
    except OSError:
        return False
    return True


def namespace_pids(namespace: str) -> list[int]:
    listed = run_command(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(pid) for pid in listed.split()]


def is_alive(pid: int) -> bool:
    """A zombie has ended (only its exit status waits to be read)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_namespace(namespace: str) -> set[int]:
    """SIGKILL every process in `namespace` until none is left; return every pid killed.

    Rounds, because a process may fork between the listing and the kill (zombies are not
    listed: a process leaves its namespaces as it exits).
    """
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_SECONDS
    while pids := namespace_pids(namespace):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{namespace}: {pids} still alive after {KILL_SECONDS} s of SIGKILL")
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
        time.sleep(0.05)
    return killed


class Host:
    """One machine: a network namespace with an address on the bridge and its own hostname.

    `run` and `spawn` start commands on it; `kill_all` pulls its plug (every process, SIGKILL);
    `cut` drops its traffic with everyone, or with one peer, and `heal` lets it through again.
    """

    def __init__(self, network: Network, name: str, octet: int) -> None:
        if not HOST_NAME.match(name):
            raise ValueError(f"host name: a lowercase letter and up to 7 more, got {name!r}")
        self.network = network
        self.name = name
        self.address = network.address(octet)
        self.namespace = f"{network.prefix}-{name}"
        self.veth = f"{network.prefix}{name}"
        self.folder = network.folder / name
        self.spawned: list[subprocess.Popen[bytes]] = []
        self._cuts: dict[str | None, list[list[str]]] = {}  # peer name (None: all) -> rules

    def create(self) -> None:
        (self.folder / "home").mkdir(parents=True, exist_ok=True)
        run_command(["ip", "netns", "add", self.namespace])
        # The host's end is its eth0, made inside the namespace so no name in ours collides.
        veth_pair = ["type", "veth", "peer", "name", "eth0", "netns", self.namespace]
        run_command(["ip", "link", "add", self.veth, *veth_pair])
        run_command(["ip", "link", "set", self.veth, "master", self.network.bridge, "up"])
        inside = ["ip", "-n", self.namespace]
        run_command([*inside, "addr", "add", f"{self.address}/24", "dev", "eth0"])
        run_command([*inside, "link", "set", "eth0", "up"])
        run_command([*inside, "link", "set", "lo", "up"])

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` on this host. Each step execs the next, so the process keeps the pid."""
        set_hostname = 'hostname "$0" && exec "$@"'
        return [
            *("ip", "netns", "exec", self.namespace, "unshare", "--uts", "--"),
            *("sh", "-c", set_hostname, self.name, *argv),
        ]

    def environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        """This machine's variables less those of the test's own Ray or Redis; HOME per host."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_VARIABLES)}
        bin_dir = str(Path(sys.executable).parent)
        base["PATH"] = f"{bin_dir}:{base.get('PATH', '/usr/bin:/bin')}"
        return {**base, "HOME": str(self.folder / "home"), **(env or {})}

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_SECONDS,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return run_command(self.command(argv), self.environment(env), timeout, check)

    def spawn(
        self, argv: Sequence[str], label: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running `argv`, stdout and stderr to `log_path(label)`."""
        log = self.log_path(label)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            process = subprocess.Popen(
                self.command(argv),
                env=self.environment(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # pytest's Ctrl-C is for pytest; teardown kills these
            )
        self.spawned.append(process)
        self.network.seen_pids.add(process.pid)
        return process

    def log_path(self, label: str) -> Path:
        return self.folder / "logs" / f"{label}.log"

    def log_tail(self, label: str, lines: int = 40) -> str:
        path = self.log_path(label)
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return f"--- {self.name} {label} ---\n" + "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        return namespace_pids(self.namespace)

    def kill_all(self) -> None:
        """Every process on this host dies at once (SIGKILL), found by namespace however it
        was started. Their kernel still closes their connections, so peers notice at once;
        `cut` first to leave peers waiting for answers, as a machine that lost power would."""
        self.network.seen_pids.update(kill_namespace(self.namespace))
        for process in self.spawned:
            process.wait(timeout=KILL_SECONDS)  # read its exit status: no zombie is left
        self.spawned.clear()

    def cut(self, peer: Host | None = None) -> None:
        """Drop every packet between this host and `peer` (None: every other host and the test
        process), both ways, established connections too. Loopback keeps working."""
        key = None if peer is None else peer.name
        if key in self._cuts:
            return
        if peer is None:
            rules = [["INPUT", "!", "-i", "lo"], ["OUTPUT", "!", "-o", "lo"]]
        else:
            rules = [["INPUT", "-s", peer.address], ["OUTPUT", "-d", peer.address]]
        for rule in rules:
            self.run(["iptables", "-I", *rule, "-j", "DROP"])
        self._cuts[key] = rules

    def heal(self, peer: Host | None = None) -> None:
        """Undo `cut(peer)`; with no peer, undo every cut of this host."""
        keys = list(self._cuts) if peer is None else [peer.name]
        for key in keys:
            for rule in self._cuts.pop(key, []):
                self.run(["iptables", "-D", *rule, "-j", "DROP"])

    def can_reach(self, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from this host to address:port opens within `timeout` s."""
        probe = [sys.executable, "-I", "-c", TCP_PROBE, address, str(port), str(timeout)]
        return self.run(probe, timeout=timeout + COMMAND_SECONDS, check=False).returncode == 0

    def remove(self) -> None:
        self.kill_all()
        run_command(["ip", "link", "del", self.veth], check=False)  # else it goes only later
        run_command(["ip", "netns", "del", self.namespace])


class Network:
    """A bridge and its hosts; a context manager that always removes all it made."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"gf{os.getpid() % 1000}"
        if _prefix_of(self.prefix) != self.prefix:
            raise ValueError(f"prefix: 'gf' and 1-3 digits, got {self.prefix!r}")
        self.bridge = f"{self.prefix}br"
        self.folder = Path("/tmp") / self.prefix  # short: Ray's socket paths live under it
        self.hosts: dict[str, Host] = {}
        self.seen_pids: set[int] = set()  # every process any host ran, for the cleanup check
        self.subnet: ipaddress.IPv4Network | None = None  # taken by `up`

    def __enter__(self) -> Network:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def up(self) -> None:
        if shutil.which("iptables") is None:
            raise RuntimeError("multi-host tests need iptables (apt-get install iptables)")
        with SUBNET_LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            sweep_leftovers()
            self.subnet = free_subnet()
            self.folder.mkdir(parents=True)
            (self.folder / "owner.pid").write_text(str(os.getpid()))
            run_command(["ip", "link", "add", self.bridge, "type", "bridge"])
            run_command(["ip", "addr", "add", f"{self.address(1)}/24", "dev", self.bridge])
        run_command(["ip", "link", "set", self.bridge, "up"])
        # Where Docker ran, FORWARD drops by default and bridged frames pass through it
        # (net.bridge.bridge-nf-call-iptables = 1).
        run_command(["iptables", "-I", *forward_rule(self.bridge)])

    def address(self, octet: int) -> str:
        """The address ending in `octet` on this network: .1 is the bridge, the test's own."""
        if self.subnet is None:
            raise RuntimeError(f"network {self.prefix} is not up")
        return str(self.subnet[octet])

    def add_host(self, name: str, octet: int) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name!r} is already on {self.bridge}")
        if any(host.address == self.address(octet) for host in self.hosts.values()):
            raise ValueError(f"address {self.address(octet)} is already taken on {self.bridge}")
        host = Host(self, name, octet)
        self.hosts[name] = host
        host.create()
        return host

    def remove_host(self, host: Host) -> None:
        self.hosts.pop(host.name, None)
        host.remove()

    def close(self) -> None:
        """Kill every host first (none may outlive the namespaces), then delete the rest."""
        steps: list[Callable[[], object]] = [host.kill_all for host in self.hosts.values()]
        steps += [host.remove for host in self.hosts.values()]
        steps += [
            lambda: run_command(["ip", "link", "del", self.bridge], check=False),
            lambda: delete_forward_rules(self.bridge),
            lambda: shutil.rmtree(self.folder, ignore_errors=True),
        ]
        failures = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # every later step must still run
                failures.append(exc)
        self.hosts.clear()
        if failures:
            raise RuntimeError(f"cleanup of {self.prefix} failed: {failures}") from failures[0]

    def leftovers(self) -> list[str]:
        """Whatever of this network is still there: namespaces, links, FORWARD rules, files."""
        found = [name for name in netns_names() + link_names() if _prefix_of(name) == self.prefix]
        found += [rule for rule in forward_rules() if self.bridge in rule.split()]
        if self.folder.exists():
            found.append(str(self.folder))
        return found


def forward_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def forward_rules() -> list[str]:
    return run_command(["iptables", "-S", "FORWARD"]).stdout.splitlines()


def delete_forward_rules(bridge: str) -> None:
    for _ in range(sum(bridge in rule.split() for rule in forward_rules())):
        run_command(["iptables", "-D", *forward_rule(bridge)])


def netns_names() -> list[str]:
    listed = run_command(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def link_names() -> list[str]:
    listed = run_command(["ip", "-o", "link", "show"]).stdout
    # "12: gf123br: <BROADCAST,..." or "13: gf123w1@if2: ..."
    return [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()]


def _prefix_of(name: str) -> str | None:
    match = PREFIX.match(name)
    return match[1] if match else None


def _owner_alive(prefix: str) -> bool:
    try:
        owner = int((Path("/tmp") / prefix / "owner.pid").read_text())
    except (OSError, ValueError):
        return False
    return is_alive(owner)


def sweep_leftovers() -> list[str]:
    """Remove what a crashed run left under a prefix whose owner is gone; return the names."""
    words = netns_names() + link_names()
    words += [word for rule in forward_rules() for word in rule.split()]
    folders = [owner_file.parent.name for owner_file in Path("/tmp").glob("gf*/owner.pid")]
    prefixes = {_prefix_of(word) for word in words}
    prefixes |= {name for name in folders if _prefix_of(name) == name}  # not /tmp/gf12-other
    removed = []
    for prefix in sorted(p for p in prefixes if p is not None and not _owner_alive(p)):
        removed += _remove_prefix(prefix)
    return removed


def _remove_prefix(prefix: str) -> list[str]:
    removed = []
    for namespace in [name for name in netns_names() if _prefix_of(name) == prefix]:
        kill_namespace(namespace)
        run_command(["ip", "netns", "del", namespace])
        removed.append(namespace)
    for link in [name for name in link_names() if _prefix_of(name) == prefix]:
        run_command(["ip", "link", "del", link], check=False)  # a veth may go with its peer
        removed.append(link)
    delete_forward_rules(f"{prefix}br")
    folder = Path("/tmp") / prefix
    if (folder / "owner.pid").exists():
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def free_subnet() -> ipaddress.IPv4Network:
    """The first of SUBNETS that no interface here has an address in."""
    listed = run_command(["ip", "-o", "-4", "addr", "show"]).stdout
    # "7: gf123br    inet 198.18.0.1/24 brd ..."
    taken = [ipaddress.ip_interface(line.split()[3]).ip for line in listed.splitlines()]
    for subnet in SUBNETS:
        if not any(address in subnet for address in taken):
            return subnet
    raise RuntimeError(f"every subnet of {SUBNETS[0]}..{SUBNETS[-1]} is in use here")
