"""The multi-host harness: separate hosts form one Ray cluster, run a job, and can be cut off.

Each host is a network namespace with its own address (tests/cluster/network.py); Redis, the
Ray head, Ray workers and dispatchers run on them as docker/compose.yaml runs them.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from jobs.records import JobStatus
from tests.cluster.harness import DASHBOARD_PORT, Cluster, RedisHost
from tests.cluster.network import Host, tcp_open, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.multihost]

TINY_SPEC = {
    "name": "multihost-digits",
    "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
    "data": {"dataset": "digits"},
    "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "num_samples": 4},
}
JOB_SECONDS = 300  # a Ray Train run on 2 busy cores: 30-90 s
PORT = 7000
# Listens on port argv[1] for argv[2] seconds, then exits.
LISTENER = (
    "import socket, sys, time\n"
    "server = socket.create_server(('0.0.0.0', int(sys.argv[1])))\n"
    "print('listening', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)
# PING the Redis at argv[1] with password argv[2] ('' for none); print the answer or the error.
PING = (
    "import redis, sys\n"
    "client = redis.Redis(host=sys.argv[1], port=6379, password=sys.argv[2] or None)\n"
    "try:\n"
    "    print(client.ping())\n"
    "except redis.RedisError as error:\n"
    "    print(type(error).__name__)\n"
)


def ping_redis(host: Host, redis_host: RedisHost, password: str) -> str:
    return host.run([sys.executable, "-c", PING, redis_host.host.address, password]).stdout.strip()


def test_hosts_form_one_cluster(cluster: Cluster) -> None:
    first = cluster.add_worker(cpus=1)
    second = cluster.add_worker(cpus=2)

    # `ray status` on the head, with the token, once the autoscaler's report has both workers
    status = cluster.head.status_when(lambda status: status.active_nodes == 3, timeout=60)

    assert status.active_nodes == 3, status.text
    assert status.total_cpus == 3.0, status.text
    nodes = cluster.head.alive_nodes() or []
    cpus_by_address = {node.address: node.cpus for node in nodes}
    assert cpus_by_address == {
        cluster.head.host.address: 0.0,
        first.host.address: 1.0,
        second.host.address: 2.0,
    }
    assert [node.address for node in nodes if node.is_head] == [cluster.head.host.address]
    state_api = f"http://{cluster.head.host.address}:{DASHBOARD_PORT}"
    with pytest.raises(urllib.error.HTTPError) as refused:  # the State API checks the token too
        urllib.request.urlopen(f"{state_api}/api/v0/nodes", timeout=10)
    assert refused.value.code == 401

    dispatcher_host = cluster.add_host("dispatcher")
    assert ping_redis(dispatcher_host, cluster.redis, cluster.redis.password) == "True"
    assert ping_redis(dispatcher_host, cluster.redis, "") == "AuthenticationError"
    assert ping_redis(dispatcher_host, cluster.redis, "wrong") == "AuthenticationError"


def test_dispatcher_host_runs_a_job(cluster: Cluster, tmp_path: Path) -> None:
    worker = cluster.add_worker(cpus=2)
    dispatcher = cluster.add_dispatcher()
    client = cluster.add_host("client")
    spec_file = tmp_path / "tiny.yaml"  # the client reads it from the shared file system
    spec_file.write_text(yaml.safe_dump(TINY_SPEC))

    job_id = json.loads(cluster.genfleet(client, "submit", str(spec_file), "--json"))["job_id"]
    record = cluster.wait_final(job_id, timeout=JOB_SECONDS)

    assert record.status == JobStatus.SUCCEEDED, f"{record.last_error}\n{cluster.logs()}"
    assert record.owner == dispatcher.dispatcher_id
    assert record.attempts == 1
    assert record.result["nodes"] == [worker.node_id]  # the head has no CPU to train on
    assert record.result["metrics"]["epoch"] == 1
    assert 0 < record.result["metrics"]["val_bits_per_dim"] < 10
    logs = cluster.store().logs(job_id)
    assert f"[dispatcher {dispatcher.dispatcher_id}] attempt 1: starting" in logs
    listed = json.loads(cluster.genfleet(client, "list", "--json"))
    assert [(job["id"], job["status"]) for job in listed["jobs"]] == [(job_id, "succeeded")]


def test_partition_helpers(cluster: Cluster) -> None:
    worker = cluster.add_host("worker")
    dispatcher = cluster.add_host("dispatcher")
    client = cluster.add_host("client")
    listener = worker.spawn([sys.executable, "-c", LISTENER, str(PORT), "120"], "listener")
    wait_until(
        lambda: "listening" in worker.log_tail("listener"),
        30,
        "listener up",
        lambda: worker.log_tail("listener"),
        listener,
    )
    assert dispatcher.can_reach(worker.address, PORT)

    worker.cut()
    assert not dispatcher.can_reach(worker.address, PORT, timeout=1)
    assert not client.can_reach(worker.address, PORT, timeout=1)
    assert not tcp_open(worker.address, PORT, timeout=1)  # the test process is cut off too
    assert worker.can_reach("127.0.0.1", PORT)  # loopback still works on the host
    worker.heal()
    assert dispatcher.can_reach(worker.address, PORT)
    assert tcp_open(worker.address, PORT)

    worker.cut(dispatcher)  # only between these two
    assert not dispatcher.can_reach(worker.address, PORT, timeout=1)
    assert client.can_reach(worker.address, PORT)
    assert tcp_open(worker.address, PORT)
    worker.heal(dispatcher)
    assert dispatcher.can_reach(worker.address, PORT)
