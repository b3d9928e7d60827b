"""`genfleet delete`, `gc` and `migrate`, run as users run them: a subprocess on a real Redis
and a real storage folder."""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest

from jobs.records import JobNotFound, JobStatus
from jobs.run_storage import RunStorage
from tests.terminal import read_until_closed
from tests.test_cli import GENFLEET, Cli, genfleet, tiny_spec

__all__ = ["genfleet"]  # the fixture, used by name below

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
VALID_STATUSES = "succeeded, failed, cancelled, dead"


def storage(cli: Cli) -> RunStorage:
    assert cli.store.storage is not None
    return cli.store.storage


def with_folder(cli: Cli, job_id: str, *trials: str) -> str:
    """What a run leaves in storage: its run folder (and its sweep trials')."""
    for folder in (job_id, *(f"{job_id}-{trial}" for trial in trials)):
        storage(cli).write(f"{folder}/claim-1/result.json", b"{}")
    return job_id


def failed(cli: Cli) -> str:
    job_id = cli.seed_running()
    cli.queue.fail(cli.leases[job_id], "ValueError: boom", retryable=False)
    return job_id


def cancelled(cli: Cli) -> str:
    job_id = cli.seed()
    cli.queue.cancel(job_id)
    return job_id


def exists(cli: Cli, job_id: str) -> bool:
    try:
        cli.store.get(job_id)
    except JobNotFound:
        return False
    return True


def without_terminal(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with stdin that is no terminal, whatever runs pytest."""
    return subprocess.run(
        [str(GENFLEET), *args],
        env=cli.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def answering(cli: Cli, answer: str, *args: str) -> tuple[int, str]:
    """The command on a terminal, answering its question; its exit code and what it showed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(GENFLEET), *args], stdin=follower, stdout=follower, stderr=follower, env=cli.env
    )
    os.close(follower)
    shown = read_until_closed(leader, prompt=b"[y/N]", reply=answer.encode() + b"\n")
    return process.wait(timeout=60), shown.decode().replace("\r\n", "\n")


# -- delete ------------------------------------------------------------------------------------


def test_delete_with_yes_removes_the_jobs_and_their_folders(genfleet: Cli) -> None:
    job_id = with_folder(genfleet, genfleet.seed_succeeded())
    sweep = with_folder(genfleet, failed(genfleet), "t_0", "t_1")
    genfleet.store.put_trial(sweep, "t_0", {"status": "completed"})
    genfleet.store.put_trial(sweep, "t_1", {"status": "error"})
    kept = with_folder(genfleet, genfleet.seed_succeeded())

    result = genfleet("delete", "--yes", job_id, sweep)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"deleted {job_id}: 0 trial(s), 1 folder(s)\ndeleted {sweep}: 2 trial(s), 3 folder(s)\n"
    )
    assert (exists(genfleet, job_id), exists(genfleet, sweep), exists(genfleet, kept)) == (
        False,
        False,
        True,
    )
    assert storage(genfleet).folders_of({job_id, sweep, kept}) == {
        job_id: [],
        sweep: [],
        kept: [kept],
    }


def test_delete_json_lists_each_jobs_trials_and_folders(genfleet: Cli) -> None:
    sweep = with_folder(genfleet, cancelled(genfleet), "t_0")
    genfleet.store.put_trial(sweep, "t_0", {"status": "stopped"})

    result = genfleet("delete", "--yes", "--json", sweep)

    assert json.loads(result.stdout) == {
        "deleted": [{"job_id": sweep, "trials": ["t_0"], "folders": [sweep, f"{sweep}-t_0"]}]
    }


def test_delete_without_yes_and_without_a_terminal_is_refused(genfleet: Cli) -> None:
    job_id = with_folder(genfleet, genfleet.seed_succeeded())

    result = without_terminal(genfleet, "delete", job_id)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: delete asks before it removes anything and stdin is not a terminal: pass --yes\n"
    )
    assert exists(genfleet, job_id)
    assert storage(genfleet).folders_of({job_id}) == {job_id: [job_id]}


@pytest.mark.parametrize(("answer", "code", "kept"), [("y", 0, False), ("n", 1, True)])
def test_delete_on_a_terminal_lists_what_goes_and_asks(
    genfleet: Cli, answer: str, code: int, kept: bool
) -> None:
    sweep = with_folder(genfleet, failed(genfleet), "t_0")
    genfleet.store.put_trial(sweep, "t_0", {"status": "error"})

    returncode, shown = answering(genfleet, answer, "delete", sweep)

    assert returncode == code
    assert shown.startswith(
        "these jobs and all they left will be deleted:\n"
        f"  {sweep}  cli-test  failed  train, 1 trial(s)\n"
        f"  and 2 folder(s) under {genfleet.env['GENFLEET_STORAGE']}\n"
        "delete 1 job(s)? [y/N] "
    )
    assert shown.endswith(
        "nothing deleted\n" if kept else f"deleted {sweep}: 1 trial(s), 2 folder(s)\n"
    )
    assert exists(genfleet, sweep) is kept


def test_delete_of_a_running_job_is_refused_and_deletes_nothing(genfleet: Cli) -> None:
    done = with_folder(genfleet, genfleet.seed_succeeded())
    running = with_folder(genfleet, genfleet.seed_running())

    result = genfleet("delete", "--yes", done, running)

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: job {running} is running: cancel it first (genfleet cancel {running})\n"
    )
    assert exists(genfleet, done) and exists(genfleet, running)
    assert storage(genfleet).folders_of({done, running}) == {done: [done], running: [running]}


def test_delete_of_an_unknown_job_exits_2_and_deletes_nothing(genfleet: Cli) -> None:
    done = genfleet.seed_succeeded()

    result = genfleet("delete", "--yes", done, "nope")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: no job with id 'nope'\n"
    assert exists(genfleet, done)


# -- gc ----------------------------------------------------------------------------------------


def test_gc_dry_run_lists_the_jobs_and_deletes_none(genfleet: Cli) -> None:
    job_ids = [genfleet.seed_succeeded(), failed(genfleet), cancelled(genfleet)]
    genfleet.seed_running()

    result = genfleet("gc", "--finished-before", "0s", "--dry-run", "--json")

    assert result.returncode == 0
    listed = json.loads(result.stdout)
    assert (listed["dry_run"], sorted(listed["job_ids"])) == (True, sorted(job_ids))
    assert all(exists(genfleet, job_id) for job_id in job_ids)


def test_gc_with_statuses_deletes_only_jobs_that_ended_so(genfleet: Cli) -> None:
    succeeded = with_folder(genfleet, genfleet.seed_succeeded())
    failed_job = with_folder(genfleet, failed(genfleet))
    cancelled_job = with_folder(genfleet, cancelled(genfleet))

    result = genfleet("gc", "--finished-before", "0s", "--status", "failed,cancelled")

    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "deleted 2 job(s) finished more than 0s ago"
    assert sorted(lines[1:]) == sorted([f"  {failed_job}", f"  {cancelled_job}"])
    assert [record.id for record in genfleet.store.list_jobs().records] == [succeeded]
    assert storage(genfleet).folders_of({succeeded, failed_job, cancelled_job}) == {
        succeeded: [succeeded],
        failed_job: [],
        cancelled_job: [],
    }


def test_gc_keeps_jobs_that_finished_more_recently_than_the_age(genfleet: Cli) -> None:
    job_id = genfleet.seed_succeeded()

    result = genfleet("gc", "--finished-before", "30d")

    assert (result.returncode, result.stdout) == (
        0,
        "deleted 0 job(s) finished more than 30d ago\n",
    )
    assert genfleet.store.get(job_id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--finished-before", "0s", "--status", "failed,running"],
            f"--status: must be among {VALID_STATUSES}, got 'running'",
        ),
        (
            ["--finished-before", "a month"],
            "--finished-before: must be a number and a unit (s, m, h, d or w) such as 30d, "
            "12h, 90m, 45s or 2w, got 'a month'",
        ),
    ],
)
def test_gc_with_a_bad_argument_exits_2_naming_it(
    genfleet: Cli, args: list[str], error: str
) -> None:
    job_id = failed(genfleet)

    result = genfleet("gc", *args)

    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: {error}\n")
    assert exists(genfleet, job_id)


# -- migrate -----------------------------------------------------------------------------------


def test_migrate_moves_legacy_images_into_storage_once(genfleet: Cli) -> None:
    job_id = genfleet.queue.submit(tiny_spec())
    genfleet.store.redis.hset(genfleet.store.keys.images(job_id), "samples:1", PNG)

    first = genfleet("migrate")
    again = genfleet("migrate", "--json")

    storage_root = genfleet.env["GENFLEET_STORAGE"]
    assert (first.returncode, first.stdout) == (
        0,
        f"moved 1 image(s) of 1 job(s) from Redis into {storage_root}\n",
    )
    assert json.loads(again.stdout) == {
        "moved": 0,
        "jobs": 0,
        "trials_indexed": 0,
        "keys_removed": 0,
    }
    assert not genfleet.store.redis.hget(
        genfleet.store.keys.images(job_id), "samples:1"
    ).startswith(PNG[:8])
    assert genfleet.store.get_image(job_id, "samples", 1) == PNG
    assert storage(genfleet).folders_of({job_id}) == {job_id: [job_id]}
