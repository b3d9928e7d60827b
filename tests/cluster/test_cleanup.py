"""The harness leaves nothing behind: no namespace, bridge, FORWARD rule, file or process.

Not even after a failure inside it, nor after a run that crashed before its cleanup: the next
`Network` sweeps what a dead owner left under the harness's prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.network import Network, is_alive, unavailable_reason

pytestmark = [
    pytest.mark.ray,
    pytest.mark.multihost,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


class Failure(Exception):
    pass


def test_a_failure_inside_the_network_leaves_no_namespace_rule_file_or_process() -> None:
    network = Network()
    seen: list[int] = []
    with pytest.raises(Failure), network:
        cluster = Cluster(network)
        cluster.start()  # Redis and a Ray head: Ray's daemons are the head's grandchildren
        cluster.add_host("client").spawn(SLEEPER, "sleeper")
        seen = [pid for host in network.hosts.values() for pid in host.pids()]
        assert network.leftovers()  # what the check below looks for is there while it runs
        raise Failure

    assert len(seen) > 10, seen  # redis-server, the sleeper, `ray start` and its daemons
    assert network.leftovers() == []
    assert [pid for pid in seen + sorted(network.seen_pids) if is_alive(pid)] == []


def test_a_run_that_crashed_before_its_cleanup_is_swept_by_the_next() -> None:
    crashed = Network(prefix=f"gf{(os.getpid() + 500) % 1000}")  # not this session's prefix
    crashed.up()
    sleeper = crashed.add_host("worker", 31).spawn(SLEEPER, "sleeper")
    # Its owner died before cleaning up: a process that has exited stands in for it.
    exited = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (crashed.folder / "owner.pid").write_text(exited.stdout)
    left = crashed.leftovers()
    assert {f"{crashed.prefix}-worker", crashed.bridge, str(crashed.folder)} <= set(left), left

    with Network() as network:
        assert crashed.leftovers() == []
        assert network.leftovers() != []
    assert sleeper.wait(timeout=15) == -signal.SIGKILL
