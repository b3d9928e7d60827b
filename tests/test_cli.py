"""The `genfleet` console script, run as users run it: a subprocess against a real Redis.

Every command's exit code is part of its contract (cluster/cli.py): 0 done, 1 invalid input,
2 usage or unknown job, 3 a service cannot be reached. No user mistake prints a traceback:
`genfleet()` checks that on every call.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from PIL import Image

from jobs.model_params import PARAMS_BY_MODEL
from jobs.queue import JobQueue
from jobs.records import JobStatus, Lease
from jobs.run_storage import RunStorage
from jobs.scheduling import Demand
from jobs.spec import JobSpec, load_spec_text
from jobs.store import JobStore
from tests.redis_fixtures import RedisProcess, free_port
from tests.terminal import read_until_closed

GENFLEET = Path(sys.executable).with_name("genfleet")
EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"
JOB_ID = re.compile(r"^[0-9a-f]{12}$")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

TRAIN_YAML = """\
name: cli-test
model:
  type: pixelcnn
  params: {layers: 1, channels: 4}
data:
  dataset: digits
train:
  epochs: 5
"""

BAD_YAML = """\
name: bad
model:
  type: pixelcnn
  params: {layers: 0}
data:
  dataset: digits
  val_fraction: 2
train:
  lr: -0.1
  bogus: 1
"""
BAD_YAML_ERRORS = [
    (4, "model.params.layers", "must be >= 1, got 0"),
    (7, "data.val_fraction", "must be < 1, got 2"),
    (9, "train.lr", "must be > 0, got -0.1"),
    (10, "train.bogus", "unknown key"),
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tiny_spec(name: str = "cli-test") -> JobSpec:
    return load_spec_text(TRAIN_YAML.replace("cli-test", name))


@dataclass
class Cli:
    """The console script with this test's environment, and the queue it talks to."""

    env: dict[str, str]
    queue: JobQueue
    store: JobStore
    tmp_path: Path
    leases: dict[str, Lease] = field(default_factory=dict)  # of the jobs `seed_running` claimed

    def __call__(
        self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(GENFLEET), *map(str, args)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def seed(self, name: str = "cli-test", priority: int | None = None) -> str:
        return self.queue.submit(tiny_spec(name), priority=priority)

    def seed_running(self) -> str:
        job_id = self.seed()
        claimed = self.queue.claim("test-worker", lease_seconds=60)
        assert claimed is not None and claimed.job_id == job_id
        self.leases[job_id] = claimed.lease
        return job_id

    def seed_succeeded(self) -> str:
        job_id = self.seed_running()
        assert self.queue.complete(self.leases[job_id], {}) is JobStatus.SUCCEEDED
        return job_id


@pytest.fixture
def genfleet(tmp_path: Path, redis_server: RedisProcess, redis_client: redis.Redis) -> Cli:
    prefix = f"cli{os.getpid()}x{time.monotonic_ns() % 10**9}"
    env = {
        **os.environ,
        "GENFLEET_REDIS_URL": redis_server.url,
        "GENFLEET_PREFIX": prefix,
        "GENFLEET_HOME": str(tmp_path / "home"),
        "GENFLEET_DATA_DIR": str(tmp_path / "data"),
        "GENFLEET_STORAGE": str(tmp_path / "storage"),
    }
    store = JobStore(redis_client, prefix, RunStorage(env["GENFLEET_STORAGE"]))
    return Cli(env, JobQueue(redis_client, prefix), store, tmp_path)


# -- validate and schema ---------------------------------------------------------------------


def test_validate_accepts_good_specs(genfleet: Cli) -> None:
    examples = sorted(EXAMPLES.glob("*.yaml"))
    result = genfleet("validate", *examples)
    assert (result.returncode, result.stdout) == (0, f"{len(examples)} spec(s) valid\n")


def test_validate_prints_every_error_with_file_line_and_field(genfleet: Cli) -> None:
    bad = write(genfleet.tmp_path / "bad.yaml", BAD_YAML)
    result = genfleet("validate", bad)
    expected = [
        f"{bad}: line {line}: {field}: {message}" for line, field, message in BAD_YAML_ERRORS
    ]
    assert (result.returncode, result.stderr.splitlines()) == (1, expected)


def test_validate_json_lists_the_errors_of_every_file(genfleet: Cli) -> None:
    bad = write(genfleet.tmp_path / "bad.yaml", BAD_YAML)
    good = EXAMPLES / "pixelcnn_digits.yaml"
    result = genfleet("validate", "--json", good, bad)
    report = json.loads(result.stdout)
    assert (result.returncode, report["valid"]) == (1, False)
    found = [(e["source"], e["line"], e["field"], e["message"]) for e in report["errors"]]
    assert found == [(str(bad), *error) for error in BAD_YAML_ERRORS]


def test_validate_names_a_missing_file(genfleet: Cli) -> None:
    missing = genfleet.tmp_path / "nowhere.yaml"
    result = genfleet("validate", missing)
    assert result.returncode == 1
    assert result.stderr == f"{missing}: cannot read (No such file or directory)\n"
    report = json.loads(genfleet("validate", "--json", missing).stdout)
    assert [error["source"] for error in report["errors"]] == [str(missing)]


def test_validate_reports_a_yaml_syntax_error_with_its_line(genfleet: Cli) -> None:
    broken = write(genfleet.tmp_path / "broken.yaml", "name: x\nmodel: {type: pixelcnn\ndata: [\n")
    result = genfleet("validate", broken)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{broken}: line 3: invalid YAML")


def test_validate_prints_bracketed_keys_as_text_not_markup(genfleet: Cli) -> None:
    # rich used to read "[/x]" as a closing tag and crash with a MarkupError traceback.
    odd = write(genfleet.tmp_path / "odd.yaml", '"[/x]": 1\n' + TRAIN_YAML)
    for command in ("validate", "submit"):
        result = genfleet(command, odd)
        assert result.returncode == 1
        assert f"{odd}: line 1: [/x]: unknown key" in result.stderr.splitlines()


def test_schema_is_json_with_every_model_variant(genfleet: Cli) -> None:
    result = genfleet("schema")
    schema = json.loads(result.stdout)
    variants = schema["properties"]["model"]["discriminator"]["mapping"]
    assert (result.returncode, set(variants)) == (0, set(PARAMS_BY_MODEL))
    assert schema["additionalProperties"] is False


# -- submit ----------------------------------------------------------------------------------


def test_worker_is_still_the_dispatcher_command_under_its_old_name(genfleet: Cli) -> None:
    helps = [genfleet(command, "--help") for command in ("dispatcher", "worker")]
    assert [result.returncode for result in helps] == [0, 0]
    assert helps[0].stdout.split("\n", 1)[1] == helps[1].stdout.split("\n", 1)[1]
    assert "--lease-seconds" in helps[0].stdout


def test_submit_prints_the_id_of_the_queued_job(genfleet: Cli) -> None:
    result = genfleet("submit", EXAMPLES / "pixelcnn_digits.yaml")
    job_id = result.stdout.strip()
    assert (result.returncode, bool(JOB_ID.match(job_id))) == (0, True)
    record = genfleet.store.get(job_id)
    assert (record.name, record.status, record.priority) == ("pixelcnn-digits", "queued", 5)
    assert genfleet.queue.queued() == [job_id]


def test_submit_priority_overrides_the_spec_and_orders_the_queue(genfleet: Cli) -> None:
    spec = EXAMPLES / "pixelcnn_digits.yaml"
    later = genfleet("submit", spec).stdout.strip()
    urgent = genfleet("submit", "--priority", "9", spec).stdout.strip()  # higher runs first
    assert genfleet.store.get(urgent).priority == 9
    assert genfleet.queue.queued() == [urgent, later]


def test_submit_with_an_idempotency_key_returns_the_same_job_twice(genfleet: Cli) -> None:
    spec = EXAMPLES / "pixelcnn_digits.yaml"
    first = genfleet("submit", "--json", "--idempotency-key", "nightly-1", spec)
    second = genfleet("submit", "--json", "--idempotency-key", "nightly-1", spec)
    job_id = json.loads(first.stdout)["job_id"]
    assert json.loads(second.stdout) == {"job_id": job_id}
    assert genfleet.store.list_jobs().total == 1


def test_submitting_a_bad_spec_exits_1_and_queues_nothing(genfleet: Cli) -> None:
    bad = write(genfleet.tmp_path / "bad.yaml", BAD_YAML)
    result = genfleet("submit", bad)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[0] == "invalid spec"
    assert f"{bad}: line 9: train.lr: must be > 0, got -0.1" in result.stderr.splitlines()
    assert genfleet.store.list_jobs().total == 0


# -- list and status -------------------------------------------------------------------------


def _rows_by_id(table_text: str, job_ids: list[str]) -> dict[str, str]:
    """Each job's table row, found by its full id; a cut id finds no row."""
    lines = ANSI_ESCAPE.sub("", table_text).splitlines()
    return {job_id: next(line for line in lines if job_id in line) for job_id in job_ids}


def test_list_prints_whole_ids_and_statuses(genfleet: Cli) -> None:
    long_name = "a-job-name-long-enough-to-push-a-table-past-eighty-columns-" * 2
    queued = genfleet.seed(long_name)
    cancelled = genfleet.seed()
    genfleet.queue.cancel(cancelled)
    result = genfleet("list")
    rows = _rows_by_id(result.stdout, [queued, cancelled])
    assert " queued " in rows[queued] and long_name in rows[queued]
    assert " cancelled " in rows[cancelled]
    assert result.stdout.splitlines()[-1] == "2 of 2 job(s)"


def test_list_in_an_80_column_terminal_keeps_ids_and_statuses_whole(genfleet: Cli) -> None:
    job_ids = [genfleet.seed("a-rather-long-job-name-for-a-narrow-terminal"), genfleet.seed()]
    genfleet.queue.cancel(job_ids[1])
    output = _run_in_terminal([str(GENFLEET), "list"], genfleet.env, columns=80)
    rows = _rows_by_id(output, job_ids)
    assert " queued " in rows[job_ids[0]] and " cancelled " in rows[job_ids[1]]
    assert max(len(line) for line in ANSI_ESCAPE.sub("", output).splitlines()) <= 80


def _run_in_terminal(command: list[str], env: dict[str, str], columns: int) -> str:
    """Output of `command` run on a pseudo-terminal `columns` wide, as a user's shell runs it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    terminal_env = {key: value for key, value in env.items() if key != "COLUMNS"}
    process = subprocess.Popen(
        command, stdout=follower, stderr=follower, env={**terminal_env, "TERM": "xterm"}
    )
    os.close(follower)
    output = read_until_closed(leader)
    assert process.wait(timeout=30) == 0
    return output.decode().replace("\r\n", "\n")


def test_list_filters_by_status_and_pages_with_limit(genfleet: Cli) -> None:
    oldest, middle, newest = genfleet.seed("a"), genfleet.seed("b"), genfleet.seed("c")
    genfleet.queue.cancel(middle)
    cancelled = json.loads(genfleet("list", "--json", "--status", "cancelled").stdout)
    assert (cancelled["total"], [job["id"] for job in cancelled["jobs"]]) == (1, [middle])
    assert cancelled["jobs"][0]["status"] == "cancelled"
    first_page = json.loads(genfleet("list", "--json", "--limit", "2").stdout)
    assert (first_page["total"], [job["id"] for job in first_page["jobs"]]) == (3, [newest, middle])
    queued_table = genfleet("list", "--status", "queued").stdout
    assert oldest in queued_table and newest in queued_table and middle not in queued_table


def test_list_refuses_a_limit_of_zero(genfleet: Cli) -> None:
    genfleet.seed()
    result = genfleet("list", "--json", "--limit", "0")
    assert (result.returncode, result.stdout) == (2, "")
    assert "--limit: must be >= 1, got 0" in result.stderr


def test_status_shows_progress_and_events(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    genfleet.store.append_metrics(job_id, {"epoch": 2, "val_bits_per_dim": 3.25})
    result = genfleet("status", job_id)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{job_id}  cli-test  (train, pixelcnn)"
    assert lines[1] == "status: running   attempts: 1/3   interruptions: 0/10"
    assert lines[2].endswith(" epoch 2/5   val bits/dim 3.2500")
    assert [line.split(maxsplit=3)[2:] for line in lines[3:]] == [
        ["queued", "submitted"],
        ["running", "attempt 1 of 3"],
    ]


def test_status_shows_the_test_number_and_a_sweeps_best_trial_chosen_on_val(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    final = {"epoch": 5, "val_bits_per_dim": 3.25, "test_bits_per_dim": 3.3}
    genfleet.store.append_metrics(job_id, final)
    line = genfleet("status", job_id).stdout.splitlines()[2]
    assert line.endswith(" epoch 5/5   val bits/dim 3.2500   test bits/dim 3.3000")

    sweep = TRAIN_YAML + "kind: sweep\nsweep:\n  space:\n    train.lr: {choice: [0.001, 0.01]}\n"
    sweep_id = genfleet.queue.submit(load_spec_text(sweep))
    claimed = genfleet.queue.claim("test-worker", lease_seconds=60)
    assert claimed.job_id == sweep_id
    summary = {
        "best_trial": "t_0001",
        "best_metric": 2.5,
        "metric": "val_bits_per_dim",
        "best_test_metric": 2.625,
        "test_metric": "test_bits_per_dim",
    }
    assert genfleet.queue.complete(claimed.lease, summary) is JobStatus.SUCCEEDED
    lines = genfleet("status", sweep_id).stdout.splitlines()
    assert "best trial t_0001:   val bits/dim 2.5000   test bits/dim 2.6250" in lines


def test_status_json_holds_the_record_and_its_events(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    genfleet.store.append_metrics(job_id, {"epoch": 1, "val_bits_per_dim": 4.0})
    body = json.loads(genfleet("status", "--json", job_id).stdout)
    assert (body["id"], body["status"], body["attempts"]) == (job_id, "running", 1)
    assert body["progress"] == {"epoch": 1, "val_bits_per_dim": 4.0}
    assert [(e["status"], e["message"]) for e in body["events"]] == [
        ("queued", "submitted"),
        ("running", "attempt 1 of 3"),
    ]


def publish_waiting(genfleet: Cli, job_id: str, reason: str) -> None:
    """A dispatcher's status, as cluster/dispatcher.py publishes it, for one waiting job."""
    demand = Demand.grouped([{"CPU": 1.0, "GPU": 1.0}] * 2, [job_id], time.time(), "d-1")
    status = {
        "updated_at": time.time(),
        "waiting": [{"job_id": job_id, "reason": reason}],
        "demand": demand.as_json(),
        "max_cluster": "gpus=8",
    }
    genfleet.store.put_dispatcher_status("d-1", status, ttl_seconds=60)


def test_status_without_a_job_lists_the_waiting_jobs_and_the_demand_sent(genfleet: Cli) -> None:
    assert genfleet("status").stdout.splitlines()[0] == (
        "no dispatcher has reported; start one with `genfleet dispatcher`"
    )
    job_id = genfleet.seed()
    reason = "waiting for nodes: needs 2 GPUs; the cluster has 0 GPUs"
    publish_waiting(genfleet, job_id, reason)
    lines = genfleet("status").stdout.splitlines()
    assert lines[:3] == [
        "dispatchers: 1   largest cluster (GENFLEET_MAX_CLUSTER): gpus=8",
        "waiting: 1 job(s) at the head of the queue",
        f"  {job_id}  {reason}",
    ]
    assert re.fullmatch(
        r"asked of Ray's autoscaler: 2 CPUs and 2 GPUs \(2 bundles\) for 1 waiting job "
        r"\(\d+ s ago, by d-1\)",
        lines[3],
    )
    assert lines[4] == "  2 x {CPU: 1, GPU: 1}"
    assert re.fullmatch(r"redis memory: [\d.]+ (B|KiB|MiB) (\(no maxmemory\)|of .*)", lines[5])
    body = json.loads(genfleet("status", "--json").stdout)
    assert body["waiting"] == [{"job_id": job_id, "reason": reason}]
    assert body["demand"]["job_ids"] == [job_id]
    assert body["redis_memory"]["used"] > 0


def test_status_says_redis_is_full_and_how_to_free_space(genfleet: Cli) -> None:
    job_id = genfleet.seed()
    publish_waiting(genfleet, job_id, "waiting for nodes")
    status = {**genfleet.store.dispatcher_statuses()[0], "redis_full_since": time.time() - 60}
    genfleet.store.put_dispatcher_status("d-1", status, ttl_seconds=30)

    first = genfleet("status").stdout.splitlines()[0]

    assert first.startswith("Redis is full since ")
    assert "genfleet gc --finished-before 30d" in first and "GENFLEET_REDIS_MAXMEMORY" in first


def test_status_of_a_waiting_job_says_why_and_what_was_asked_for_it(genfleet: Cli) -> None:
    job_id = genfleet.seed()
    reason = "waiting for nodes: needs 2 GPUs; the cluster has 0 GPUs"
    genfleet.queue.set_pending_reason(job_id, reason)
    publish_waiting(genfleet, job_id, reason)
    lines = genfleet("status", job_id).stdout.splitlines()
    assert lines[2:4] == [
        f"why waiting: {reason}",
        "asked of Ray's autoscaler: 2 CPUs and 2 GPUs (2 bundles) for 1 waiting job",
    ]


def test_a_bad_max_cluster_stops_a_command_with_one_line(genfleet: Cli) -> None:
    result = genfleet("list", env={"GENFLEET_MAX_CLUSTER": "gpus=lots"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: GENFLEET_MAX_CLUSTER: gpus must be a number >= 0, got 'lots'\n"


@pytest.mark.parametrize(
    "command",
    [
        ["status", "nope"],
        ["status", "--json", "nope"],
        ["cancel", "nope"],
        ["retry", "nope"],
        ["priority", "nope", "3"],
        ["logs", "nope"],
        ["logs", "--follow", "nope"],
        ["samples", "nope", "--out", "{tmp}/samples"],
    ],
)
def test_an_unknown_job_exits_2_with_one_line(genfleet: Cli, command: list[str]) -> None:
    args = [part.format(tmp=genfleet.tmp_path) for part in command]
    result = genfleet(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: no job with id 'nope'\n"
    assert not (genfleet.tmp_path / "samples").exists()


# -- cancel, retry, priority -----------------------------------------------------------------


def test_cancel_stops_a_queued_job_now(genfleet: Cli) -> None:
    job_id = genfleet.seed()
    result = genfleet("cancel", job_id)
    assert (result.returncode, result.stdout) == (0, f"{job_id}: cancelled\n")
    assert genfleet.store.get(job_id).status == JobStatus.CANCELLED
    assert genfleet.queue.queued() == []


def test_cancel_asks_a_running_job_to_stop(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    result = genfleet("cancel", "--json", job_id)
    assert json.loads(result.stdout) == {"job_id": job_id, "status": "running"}
    assert genfleet.queue.is_cancel_requested(job_id)


def test_cancel_of_a_finished_job_is_refused(genfleet: Cli) -> None:
    job_id = genfleet.seed_succeeded()
    result = genfleet("cancel", job_id)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot cancel job {job_id}: it is succeeded; "
        "cancel needs a queued or running job\n"
    )
    assert genfleet.store.get(job_id).status == JobStatus.SUCCEEDED


def test_retry_queues_a_failed_job_and_refuses_a_queued_one(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    genfleet.queue.fail(genfleet.leases[job_id], "ValueError: boom", retryable=False)
    assert genfleet.store.get(job_id).status == JobStatus.FAILED
    result = genfleet("retry", job_id)
    assert (result.returncode, result.stdout) == (0, f"{job_id}: queued\n")
    assert genfleet.queue.queued() == [job_id]
    again = genfleet("retry", job_id)
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: cannot retry job {job_id}: it is queued;")


def test_priority_moves_a_queued_job_to_the_head(genfleet: Cli) -> None:
    first, second = genfleet.seed(priority=5), genfleet.seed(priority=5)
    result = genfleet("priority", "--json", second, "8")  # higher runs first
    assert json.loads(result.stdout) == {"job_id": second, "priority": 8}
    assert genfleet.queue.queued() == [second, first]
    assert genfleet("priority", first, "9").stdout == f"{first}: priority 9\n"
    assert genfleet.queue.queued() == [first, second]


def test_priority_of_a_finished_job_or_out_of_range_is_refused(genfleet: Cli) -> None:
    done = genfleet.seed_succeeded()
    finished = genfleet("priority", done, "1")
    assert finished.returncode == 1
    assert finished.stderr.startswith(f"error: cannot reprioritise job {done}: it is succeeded;")
    queued = genfleet.seed(priority=5)
    out_of_range = genfleet("priority", queued, "12")
    assert out_of_range.returncode == 2
    assert "invalid choice: 12" in out_of_range.stderr
    assert genfleet.store.get(queued).priority == 5


# -- logs and samples ------------------------------------------------------------------------


def test_logs_prints_the_last_lines(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    for epoch in range(1, 6):
        genfleet.store.append_log(job_id, f"epoch {epoch} done")
    result = genfleet("logs", "--tail", "2", job_id)
    assert (result.returncode, result.stdout) == (0, "epoch 4 done\nepoch 5 done\n")
    assert genfleet("logs", "--tail", "0", job_id).stdout == ""


def test_logs_follow_prints_new_lines_and_exits_when_the_job_finishes(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    genfleet.store.append_log(job_id, "epoch 1 done")
    output = genfleet.tmp_path / "follow.txt"
    with output.open("w") as sink:
        follower = subprocess.Popen(
            [str(GENFLEET), "logs", "--follow", job_id],
            env=genfleet.env,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        _wait_until(lambda: output.read_text() == "epoch 1 done\n", timeout=20)
        genfleet.store.append_log(job_id, "epoch 2 done")
        _wait_until(lambda: output.read_text().endswith("epoch 2 done\n"), timeout=20)
        assert follower.poll() is None, "follow must keep running while the job runs"
        genfleet.store.append_log(job_id, "saved checkpoint")
        genfleet.queue.complete(genfleet.leases[job_id], {})
        _, stderr = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert (follower.returncode, stderr) == (0, "")
    assert output.read_text() == "epoch 1 done\nepoch 2 done\nsaved checkpoint\n"


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.1)


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def test_samples_writes_every_grid_as_a_png_file(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    grids = {("samples", 1): _png(10), ("samples", 2): _png(200), ("completions", 2): _png(90)}
    for (name, epoch), png in grids.items():
        genfleet.store.put_image(job_id, name, epoch, png)
    out = genfleet.tmp_path / "grids"
    result = genfleet("samples", job_id, "--out", out)
    assert (result.returncode, result.stdout) == (0, f"wrote 3 PNG file(s) to {out}\n")
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    assert written == {f"{name}-epoch{epoch:03d}.png": png for (name, epoch), png in grids.items()}


def test_samples_writes_what_it_can_read_and_names_each_file_it_cannot(genfleet: Cli) -> None:
    job_id = genfleet.seed_running()
    for epoch in (1, 2):
        genfleet.store.put_image(job_id, "samples", epoch, _png(epoch * 50))
    [lost] = (genfleet.tmp_path / "storage" / job_id / "images").rglob("samples-000001-*.png")
    lost.unlink()
    out = genfleet.tmp_path / "grids"

    result = genfleet("samples", job_id, "--out", out)

    assert (result.returncode, result.stdout) == (1, f"wrote 1 PNG file(s) to {out}\n")
    assert result.stderr.startswith(f"not written: {genfleet.tmp_path / 'storage'}/{job_id}/")
    assert "cannot be read" in result.stderr
    assert [path.name for path in out.iterdir()] == ["samples-epoch002.png"]


# -- Redis unreachable -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["list"], ["status", "abc"], ["submit", str(EXAMPLES / "pixelcnn_digits.yaml")]],
)
def test_an_unreachable_redis_exits_3(genfleet: Cli, command: list[str]) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the probe socket is closed
    result = genfleet(*command, env={"GENFLEET_REDIS_URL": closed}, timeout=30)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.startswith("error: cannot reach Redis (")
    assert result.stderr.rstrip().endswith("check GENFLEET_REDIS_URL")


# -- run-local -------------------------------------------------------------------------------

TINY_RUN_YAML = """\
name: tiny-run
model:
  type: pixelcnn
  params: {layers: 1, channels: 4}
data:
  dataset: digits
train:
  epochs: 1
  batch_size: 32
  max_steps_per_epoch: 2
  num_samples: 4
"""


def test_run_local_trains_a_tiny_spec_into_the_out_folder(genfleet: Cli) -> None:
    spec = write(genfleet.tmp_path / "tiny.yaml", TINY_RUN_YAML)
    out = genfleet.tmp_path / "run"
    result = genfleet("run-local", spec, "--out", out, "--no-progress", timeout=180)
    assert (result.returncode, result.stdout) == (
        0,
        f"done: metrics, samples and checkpoints in {out}\n",
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 2)]
    assert 0 < rows[0]["val_bits_per_dim"] < 10  # 17 grey levels: at most log2(17) = 4.09 + slack
    assert (out / "samples" / "samples-epoch001.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "checkpoints" / "epoch-0001" / "training_state.pt").stat().st_size > 0


def test_run_local_stops_between_steps_on_the_first_ctrl_c(genfleet: Cli) -> None:
    long_run = TINY_RUN_YAML.replace("epochs: 1", "epochs: 500").replace(
        "max_steps_per_epoch: 2", "max_steps_per_epoch: 20"
    )
    spec = write(genfleet.tmp_path / "long.yaml", long_run)
    out = genfleet.tmp_path / "run"
    process = subprocess.Popen(
        [str(GENFLEET), "run-local", str(spec), "--out", str(out), "--no-progress"],
        env=genfleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "stopping after this step" in stderr and "Traceback" not in stderr
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert 1 <= len(epochs) < 500
    # What it wrote is whole: the newest checkpoint resumes the run, as the last line says.
    newest = sorted((out / "checkpoints").iterdir())[-1]
    assert (newest / "training_state.pt").stat().st_size > 0
    assert stdout.startswith("stopped: cancelled at epoch ")
    assert stdout.endswith(f", resume with --resume {newest}\n")


def test_run_local_refuses_a_sweep_spec(genfleet: Cli) -> None:
    out = genfleet.tmp_path / "run"
    result = genfleet("run-local", EXAMPLES / "demo_sweep_digits.yaml", "--out", out)
    assert result.returncode == 1
    assert "run-local runs train specs" in result.stderr
    assert "genfleet submit" in result.stderr
    assert not out.exists()


def test_run_local_on_mnist_offline_names_the_data_folder(genfleet: Cli) -> None:
    spec = write(
        genfleet.tmp_path / "mnist.yaml",
        TINY_RUN_YAML.replace("dataset: digits", "dataset: mnist"),
    )
    result = genfleet("run-local", spec, "--out", genfleet.tmp_path / "run", "--no-progress")
    assert result.returncode == 1
    folder = genfleet.tmp_path / "data" / "mnist"
    assert result.stderr.startswith(f"error: mnist: no data in {folder}")
    assert "data.download: true" in result.stderr


# -- up: refusals before anything starts -----------------------------------------------------


def test_up_refuses_a_dashboard_beyond_loopback_without_a_password(genfleet: Cli) -> None:
    result = genfleet("up", env={"GENFLEET_DASHBOARD_ADDRESS": "0.0.0.0"})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: refusing to serve the dashboard on 0.0.0.0: it is not a loopback address and no "
        "password is set; set GENFLEET_DASHBOARD_PASSWORD or use --address 127.0.0.1"
    )
    assert "Ray" not in result.stderr  # refused before a local Ray was started for nothing


def test_up_refuses_a_dashboard_port_in_use(genfleet: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = genfleet("up", env={"GENFLEET_DASHBOARD_PORT": str(port)})
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: GENFLEET_DASHBOARD_PORT: {port} on 127.0.0.1 is in use; choose another port "
        "or start with --no-dashboard"
    )
