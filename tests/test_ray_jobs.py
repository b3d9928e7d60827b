"""Queued jobs run on a real local Ray cluster: Train runs, Tune sweeps, cancel, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from ray import tune

from cluster.checkpoint_evaluation import Target
from cluster.checkpoint_pruning import KEPT_CHECKPOINTS
from cluster.remote_evaluation import evaluate_on_cluster
from jobs.records import JobRecord, JobStatus
from jobs.spec import validate_spec_dict
from tests.ray_fixtures import Stack

pytestmark = pytest.mark.ray

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD}


def digits_spec(**overrides: object) -> dict:
    spec = {
        "name": "ray-test",
        "model": {"type": "pixelcnn", "params": {"layers": 1, "channels": 4, "output_hidden": 8}},
        "data": {"dataset": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "num_samples": 4},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            spec.setdefault(section, {})[field] = value
        else:
            spec[section] = value
    return spec


def submit(stack: Stack, **overrides: object) -> str:
    return stack.queue.submit(validate_spec_dict(digits_spec(**overrides)))


# Both paths: two workers are a Ray Train DDP run; one trains directly in one process (a warm
# runner, cluster/warm_runner.py, which the dispatcher restarts as Ray Train restarts a group;
# for a sweep, its trial actor).
BOTH_PATHS = pytest.mark.parametrize("workers", [2, 1], ids=["ray-train", "direct"])
# The model of a run a fault must meet mid-way: a warm runner has no report to wait for between
# epochs, and trained the whole of the two-worker runs' tiny model before the fault came.
MID_RUN_MODEL = {
    2: digits_spec()["model"],
    1: {"type": "pixelcnn", "params": {"layers": 3, "channels": 32, "output_hidden": 32}},
}


def submit_mid_run_job(stack: Stack, workers: int) -> str:
    """Six epochs of a run a fault meets after its second."""
    return submit(
        stack,
        model=MID_RUN_MODEL[workers],
        train__epochs=6,
        train__max_steps_per_epoch=20,
        scaling__num_workers=workers,
    )


def test_two_worker_job_succeeds_with_metrics_samples_and_checkpoint(
    stack: Stack, dispatcher
) -> None:
    job_id = submit(stack)
    record = stack.wait_final(job_id)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    metrics = stack.store.metrics(job_id)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(0 < m["val_bits_per_dim"] < 10 for m in metrics)
    images = stack.store.list_images(job_id)
    assert {(ref.name, ref.epoch) for ref in images} >= {("samples", 1), ("samples", 2)}
    png = stack.store.get_image(job_id, "samples", 2)
    assert png.startswith(b"\x89PNG")
    assert stack.store.checkpoints(job_id)
    assert record.result["checkpoint"] and Path(record.result["checkpoint"]).exists()
    assert sorted(worker["rank"] for worker in record.result["workers"]) == [0, 1]
    # Test is evaluated once, after the last epoch, summed exactly over both ranks.
    assert ["test_bits_per_dim" in m for m in metrics] == [False, True]
    assert record.progress["test_bits_per_dim"] == pytest.approx(metrics[-1]["test_bits_per_dim"])

    # `genfleet evaluate --cluster` as a Ray task reproduces it from the final checkpoint.
    positions: list[tuple[int, int]] = []
    target = Target(record.job_spec(), record.result["checkpoint"])
    evaluated = evaluate_on_cluster(
        target, "test", None, stack.settings, lambda *position: positions.append(position)
    )
    assert evaluated["images"] == 180 and evaluated["epoch"] == 2
    assert positions[-1] == (3, 3)  # 180 test images in batches of 64, relayed from the task
    assert evaluated["test_bits_per_dim"] == pytest.approx(
        metrics[-1]["test_bits_per_dim"], rel=1e-6
    )


@BOTH_PATHS
def test_sweep_runs_trials_as_train_runs_and_records_the_best(
    stack: Stack, dispatcher, workers: int
) -> None:
    sweep = {
        "metric": "val_bits_per_dim",
        "mode": "min",
        "num_samples": 4,
        "max_concurrent": 2,
        "scheduler": "asha",
        "grace_period": 1,
        "space": {"train.lr": {"loguniform": [0.0003, 0.03]}},
    }
    job_id = submit(stack, kind="sweep", sweep=sweep, train__epochs=3, scaling__num_workers=workers)
    record = stack.wait_final(job_id, timeout=480)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    trials = {trial["trial_id"]: trial for trial in stack.store.trials(job_id)}
    assert len(trials) == 4
    best = record.result["best_trial"]
    assert best in trials
    assert record.result["best_metric"] == pytest.approx(
        min(t["metric"] for t in trials.values() if t["metric"] is not None)
    )
    for trial_id, info in trials.items():
        assert info["status"] in {"completed", "stopped"}, info
        curve = stack.store.metrics(job_id, trial=trial_id)
        # a stopped trial may finish an epoch or two before Tune acts on ASHA's decision
        assert len(curve) >= info["iterations"] >= 1
        if info["status"] == "stopped":
            assert "ASHA" in info["reason"]


def submit_tiny_sweep(stack: Stack, **sweep: object) -> str:
    """A one-epoch FIFO sweep of one-worker trials."""
    sweep = {"metric": "val_bits_per_dim", "mode": "min", "scheduler": "fifo", **sweep}
    return submit(
        stack,
        kind="sweep",
        sweep=sweep,
        train__epochs=1,
        train__max_steps_per_epoch=2,
        scaling__num_workers=1,
    )


def trial_errors(trials: list[dict]) -> list[str]:
    """The end of each failed trial's error file, which Tune names as its stop reason."""
    files = [Path(trial["reason"]) for trial in trials if trial.get("reason")]
    return [path.read_text()[-3000:] for path in files if path.is_file()]


def completed_trials(stack: Stack, job_id: str) -> list[dict]:
    """The trials of a sweep that succeeded, each completed, the best one recorded."""
    record = stack.wait_final(job_id, timeout=300)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    trials = {trial["trial_id"]: trial for trial in stack.store.trials(job_id)}
    failed = [trial for trial in trials.values() if trial["status"] != "completed"]
    assert not failed, (failed, trial_errors(failed), stack.store.logs(job_id, tail=40))
    best = trials[record.result["best_trial"]]
    assert record.result["best_config"] == best["config"]
    assert record.result["best_metric"] == min(trial["metric"] for trial in trials.values())
    # Chosen on val, reported on test: every completed trial evaluated its test split.
    assert record.result["test_metric"] == "test_bits_per_dim"
    assert record.result["best_test_metric"] == best["test_metric"] > 0
    assert all(trial["test_metric"] > 0 for trial in trials.values())
    return list(trials.values())


def test_grid_search_enumerates_choices_and_optuna_samples_within_bounds(
    stack: Stack, dispatcher
) -> None:
    # Both sweeps run at once on the 4-CPU test cluster, which halves the wait.
    grid = submit_tiny_sweep(
        stack,
        search="grid",
        num_samples=1,
        max_concurrent=2,
        # Sampled, the choice would give one trial here; enumerated, it gives both.
        space={"train.lr": {"grid": [0.002]}, "train.batch_size": {"choice": [32, 64]}},
    )
    optuna = submit_tiny_sweep(
        stack,
        search="optuna",
        num_samples=2,
        max_concurrent=2,
        space={
            "train.lr": {"uniform": [0.001, 0.01]},
            "model.params.channels": {"randint": [4, 9]},
            "train.batch_size": {"choice": [32, 64]},
        },
    )
    configs = sorted(
        (t["config"]["train.lr"], t["config"]["train.batch_size"])
        for t in completed_trials(stack, grid)
    )
    assert configs == [(0.002, 32), (0.002, 64)]
    sampled = [trial["config"] for trial in completed_trials(stack, optuna)]
    assert len(sampled) == 2
    for config in sampled:
        assert 0.001 <= config["train.lr"] <= 0.01
        assert isinstance(config["model.params.channels"], int)
        assert 4 <= config["model.params.channels"] < 9
        assert config["train.batch_size"] in (32, 64)


@BOTH_PATHS
def test_cancelled_run_and_sweep_stop_within_ten_seconds_and_free_their_resources(
    stack: Stack, dispatcher, workers: int
) -> None:
    # Both at once: a run's worker group and a sweep's per-trial reservations are placement
    # groups that Ray keeps after their runner dies, unless the dispatcher frees them.
    def free_cpus() -> float:  # the dispatcher's idle warm runners are free for its next run
        return ray.available_resources().get("CPU", 0) + dispatcher.pool.idle_cpus

    free_before = free_cpus()  # earlier tests' runs may still end
    endless = {"train__epochs": 200, "train__max_steps_per_epoch": 50}
    run_id = submit(stack, scaling__num_workers=workers, **endless)
    sweep = {
        "metric": "val_bits_per_dim",
        "mode": "min",
        "num_samples": 2,
        "max_concurrent": 1,
        "scheduler": "fifo",
        "space": {"train.lr": {"uniform": [0.001, 0.01]}},
    }
    sweep_id = submit(stack, kind="sweep", sweep=sweep, scaling__num_workers=1, **endless)
    stack.wait_for(run_id, lambda r: bool(stack.store.metrics(run_id)), timeout=120)
    stack.wait_for(sweep_id, lambda r: _any_trial_reported(stack, sweep_id), timeout=120)
    assert len(stack.store.trials(sweep_id)) == 1  # max_concurrent: 1, and trial 1 runs on
    requested = time.monotonic()
    stack.queue.cancel(run_id)
    stack.queue.cancel(sweep_id)
    for job_id in (run_id, sweep_id):
        record = stack.wait_status(job_id, JobStatus.CANCELLED, timeout=10)
        assert record.status == JobStatus.CANCELLED
    assert time.monotonic() - requested < 10
    deadline = requested + 10
    while free_cpus() < free_before:
        if time.monotonic() > deadline:
            groups = ray.util.placement_group_table().values()
            held = [
                (g["placement_group_id"], g["bundles"]) for g in groups if g["state"] != "REMOVED"
            ]
            pytest.fail(f"CPUs still held 10 s after cancel: {ray.available_resources()}; {held}")
        time.sleep(0.2)


def _any_trial_reported(stack: Stack, sweep_id: str) -> bool:
    return any(
        stack.store.metrics(sweep_id, trial["trial_id"]) for trial in stack.store.trials(sweep_id)
    )


@BOTH_PATHS
def test_killed_train_worker_restarts_from_the_last_checkpoint(
    stack: Stack, dispatcher, workers: int
) -> None:
    job_id = submit_mid_run_job(stack, workers)
    stack.wait_for(job_id, lambda r: len(stack.store.metrics(job_id)) >= 2, timeout=120)
    victim = dispatcher.active[job_id].workers[workers - 1].pid
    os.kill(victim, signal.SIGKILL)
    record = stack.wait_final(job_id, timeout=240)
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    assert (record.attempts, record.claims, record.interruptions) == (1, 1, 0)  # in the claim
    # Ray Train registers a reported checkpoint asynchronously, so the restart may resume from
    # an epoch before the last one reported; the store's curve rewinds to it: each epoch once.
    assert [m["epoch"] for m in stack.store.metrics(job_id)] == list(range(1, 7))
    logs = "\n".join(stack.store.logs(job_id, tail=500))
    assert "resumed from" in logs
    resumed_after = int(logs.split("resumed from", 1)[1].split("after epoch ")[1].split(",")[0])
    assert 1 <= resumed_after < 6


def replace_dispatcher_mid_run(
    stack: Stack,
    local_ray: str,
    job_id: str,
    kill_when: Callable[[], bool],
    timeout: float,
    stop_with: signal.Signals = signal.SIGKILL,
) -> JobRecord:
    """Run `genfleet dispatcher` until `kill_when` holds, stop it with `stop_with`, start a second
    one and wait for the job to end under it."""
    env = {
        **os.environ,
        "GENFLEET_REDIS_URL": stack.settings.redis_url,
        "GENFLEET_PREFIX": stack.settings.prefix,
        "GENFLEET_STORAGE": stack.settings.storage,
        "GENFLEET_HOME": str(stack.settings.home),
    }
    command = [sys.executable, "-m", "cluster.cli", "dispatcher", "--ray-address", local_ray]
    first = subprocess.Popen([*command, "--lease-seconds", "4"], env=env)
    try:
        stack.wait_for(job_id, lambda r: kill_when(), timeout=timeout)
        first.send_signal(stop_with)
        first.wait(timeout=30)
        second = subprocess.Popen([*command, "--lease-seconds", "4"], env=env)
        try:
            return stack.wait_final(job_id, timeout=timeout)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()


@BOTH_PATHS
def test_sigkilled_dispatcher_is_replaced_and_the_run_resumes_once(
    stack: Stack, local_ray: str, workers: int
) -> None:
    job_id = submit_mid_run_job(stack, workers)
    record = replace_dispatcher_mid_run(
        stack, local_ray, job_id, lambda: len(stack.store.metrics(job_id)) >= 2, timeout=240
    )
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    # A crashed dispatcher is an interruption, not a failure of the run: no attempt used.
    assert (record.attempts, record.claims, record.interruptions) == (1, 2, 1)
    assert_resumed_once(stack, job_id)


@BOTH_PATHS
def test_sigtermed_dispatcher_hands_its_job_back_and_the_run_resumes_without_an_attempt(
    stack: Stack, local_ray: str, workers: int
) -> None:
    job_id = submit_mid_run_job(stack, workers)
    record = replace_dispatcher_mid_run(
        stack,
        local_ray,
        job_id,
        lambda: len(stack.store.metrics(job_id)) >= 2,
        timeout=240,
        stop_with=signal.SIGTERM,
    )
    assert record.status == JobStatus.SUCCEEDED, record.last_error
    assert (record.attempts, record.claims, record.interruptions) == (1, 2, 0)
    messages = [event.message for event in stack.store.events(job_id)]
    assert any(message.startswith("handed back: dispatcher") for message in messages), messages
    assert_resumed_once(stack, job_id)
    # The hand-back stored everything its run sent, so every checkpoint in storage is recorded,
    # and the dispatchers pruned all but the newest three: the second, stopped as soon as the job
    # ended, waited for its last deletions, which would have died with it.
    newest = sorted(Path(c.uri) for c in stack.store.checkpoints(job_id)[-KEPT_CHECKPOINTS:])
    assert checkpoint_folders(stack, job_id) == newest


def checkpoint_folders(stack: Stack, job_id: str) -> list[Path]:
    return sorted(Path(stack.settings.storage, job_id).glob("claim-*/epoch-*"))


def assert_resumed_once(stack: Stack, job_id: str) -> None:
    statuses = [event.status for event in stack.store.events(job_id)]
    assert statuses.count(JobStatus.SUCCEEDED) == 1
    logs = "\n".join(stack.store.logs(job_id, tail=500))
    assert "attempt 1: resuming from its last checkpoint" in logs
    assert "resumed from" in logs
    # Resumed, not started over; an epoch redone after the checkpoint keeps one row.
    assert [m["epoch"] for m in stack.store.metrics(job_id)] == list(range(1, 7))


def test_sweep_whose_dispatcher_died_resumes_its_trials_with_tune_restore(
    stack: Stack, local_ray: str
) -> None:
    sweep = {
        "metric": "val_bits_per_dim",
        "mode": "min",
        "num_samples": 2,
        "max_concurrent": 2,
        "scheduler": "fifo",
        "space": {"train.lr": {"choice": [0.001, 0.003]}},
    }
    job_id = submit(
        stack,
        kind="sweep",
        sweep=sweep,
        train__epochs=6,
        train__max_steps_per_epoch=20,
        scaling__num_workers=1,
    )
    experiment = str(Path(stack.settings.storage) / job_id)
    trials_before: set[str] = set()

    def both_trials_checkpointed_and_experiment_saved() -> bool:
        trials_before.update(trial["trial_id"] for trial in stack.store.trials(job_id))
        epochs_done = [len(stack.store.metrics(job_id, trial=t)) for t in trials_before]
        # By its third report, Ray Train has stored a trial's first checkpoints.
        return (
            len(trials_before) == 2 and min(epochs_done) >= 3 and tune.Tuner.can_restore(experiment)
        )

    record = replace_dispatcher_mid_run(
        stack, local_ray, job_id, both_trials_checkpointed_and_experiment_saved, timeout=300
    )
    assert record.status == JobStatus.SUCCEEDED, (
        record.last_error,
        stack.store.trials(job_id),
        stack.store.logs(job_id, tail=80),
    )
    assert (record.attempts, record.claims, record.interruptions) == (1, 2, 1)
    assert "resuming the sweep in" in "\n".join(stack.store.logs(job_id, tail=500))
    # A sweep started afresh would have new trial ids; a restored one keeps its trials.
    trials = {trial["trial_id"]: trial for trial in stack.store.trials(job_id)}
    assert set(trials) == trials_before
    assert record.result["best_trial"] in trials
    for trial_id, info in trials.items():
        assert info["status"] == "completed", info
        epochs = [m["epoch"] for m in stack.store.metrics(job_id, trial=trial_id)]
        # Each trial's Train run resumed from its checkpoint: epoch 1 was trained once.
        assert epochs.count(1) == 1, (epochs, stack.store.logs(job_id, tail=100))
        assert epochs[-1] == 6
        assert set(epochs) == {1, 2, 3, 4, 5, 6}
