"""`from genfleet import Client`: the Python client against a real Redis.

Runs are seeded through the real queue and store (tests/dashboard_seed.py), as a dispatcher
writes them; the notebook quickstart (tests/test_notebook.py) drives it end to end on Ray.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from genfleet import (
    Client,
    InvalidTransition,
    JobNotFound,
    JobStatus,
    JobTimeout,
    NotASweep,
    SpecError,
    SpecFileError,
)
from genfleet.progress import position
from jobs.settings import Settings
from tests import dashboard_seed as seed
from tests.redis_fixtures import RedisProcess

EXAMPLES = Path(__file__).parents[1] / "jobs" / "examples"
TINY = {"name": "tiny", "model": {"type": "pixelcnn"}, "data": {"dataset": "digits"}}


@pytest.fixture
def client(
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Client:
    """A client that connects as users' do: through the environment."""
    monkeypatch.setenv("GENFLEET_REDIS_URL", redis_server.url)
    monkeypatch.setenv("GENFLEET_PREFIX", "client")
    monkeypatch.setenv("GENFLEET_HOME", str(tmp_path))
    return Client()


def test_submit_takes_a_path_yaml_text_a_dict_or_a_spec_with_priority_and_idempotency(
    client: Client,
) -> None:
    from_path = client.submit(EXAMPLES / "pixelcnn_digits.yaml")
    from_text = client.submit((EXAMPLES / "vae_digits.yaml").read_text(), priority=9)
    from_dict = client.submit(TINY, idempotency_key="once")
    again = client.submit(TINY, idempotency_key="once")

    assert from_path.record().name == "pixelcnn-digits"
    assert (from_text.record().model_type, from_text.record().priority) == ("vae", 9)
    assert again.id == from_dict.id
    assert from_dict.status() is JobStatus.QUEUED
    assert client.queue.queued() == [from_text.id, from_path.id, from_dict.id]


def test_yaml_text_of_any_length_is_text_and_one_line_is_a_file(client: Client) -> None:
    text = "name: long\nmodel: {type: pixelcnn}\ndata: {dataset: digits}\n" + "#" * 400 + "\n"
    assert client.submit(text).record().name == "long"
    with pytest.raises(SpecFileError, match="name: short: cannot read"):
        client.submit("name: short")
    with pytest.raises(TypeError, match="spec: a JobSpec, a mapping, a path or YAML text, got int"):
        client.submit(123)  # type: ignore[arg-type]


def test_a_sweeps_bar_counts_finished_trials_of_every_grid_combination(client: Client) -> None:
    grid = {"search": "grid", "num_samples": 1, "space": {"train.lr": {"grid": [1e-3, 2e-3, 3e-3]}}}
    job = client.submit({**TINY, "kind": "sweep", "sweep": grid})
    client.store.put_trial(job.id, "t1", {"status": "completed", "config": {}})
    client.store.put_trial(job.id, "t2", {"status": "running", "config": {}})
    record = job.record()
    assert position(record.job_spec(), record, client.store) == (1, 3, "trial")
    run = client.submit({**TINY, "train": {"epochs": 7}}).record()
    assert position(run.job_spec(), run, client.store) == (0, 7, "epoch")


def test_an_invalid_spec_raises_one_error_listing_every_field(client: Client) -> None:
    bad = {**TINY, "train": {"lr": -0.1, "epochs": 0}, "data": {"dataset": "svhn"}}
    with pytest.raises(SpecError) as caught:
        client.submit(bad)
    fields = sorted(error.field for error in caught.value.errors)
    assert fields == ["data.dataset", "train.epochs", "train.lr"]
    assert "train.lr: must be > 0, got -0.1" in str(caught.value)
    with pytest.raises(SpecFileError, match=r"nowhere\.yaml: cannot read"):
        client.submit("nowhere.yaml")
    assert client.queue.queued() == []


def test_jobs_filters_by_status_model_and_kind_newest_first(client: Client) -> None:
    pixelcnn = client.submit(TINY)
    vae = client.submit({**TINY, "model": {"type": "vae"}})
    sweep = client.submit(EXAMPLES / "pixelcnn_sweep_digits.yaml")
    vae.cancel()

    assert [job.id for job in client.jobs()] == [sweep.id, vae.id, pixelcnn.id]
    assert [job.id for job in client.jobs(status="cancelled")] == [vae.id]
    assert [job.id for job in client.jobs(model="vae")] == [vae.id]
    assert [job.id for job in client.jobs(kind="sweep")] == [sweep.id]
    assert [job.id for job in client.jobs(limit=1, offset=1)] == [vae.id]
    with pytest.raises(JobNotFound, match="no job with id 'nope'"):
        client.job("nope")


def test_a_runs_metrics_samples_and_logs_read_back_as_dataframe_images_and_lines(
    client: Client,
) -> None:
    job = client.job(seed.seed_trained_job(client.queue, client.store, epochs=3))

    metrics = job.metrics()
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert metrics["val_bits_per_dim"].tolist() == [
        seed.metrics_row(epoch)["val_bits_per_dim"] for epoch in (1, 2, 3)
    ]
    assert metrics["test_bits_per_dim"].dropna().tolist() == [
        seed.metrics_row(3, last=True)["test_bits_per_dim"]
    ]
    latest, first = job.samples(), job.samples(epoch=1)
    assert list(latest) == ["samples"] and latest["samples"].size[0] > 0
    assert latest["samples"].tobytes() != first["samples"].tobytes()  # epochs' grids differ
    assert job.samples(epoch=99) == {}
    assert job.logs(tail=1) == ["epoch 3: val_bits_per_dim 2.167"]
    assert job.status() is JobStatus.SUCCEEDED


def test_cancel_retry_and_priority_change_the_job_in_redis(client: Client) -> None:
    job = client.submit(TINY)
    job.set_priority(8)
    assert job.record().priority == 8
    assert job.cancel() is JobStatus.CANCELLED
    job.retry()
    assert job.status() is JobStatus.QUEUED
    with pytest.raises(InvalidTransition, match="cannot retry job"):
        job.retry()


def test_wait_returns_the_final_record_and_draws_a_bar_of_epochs(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = seed.seed_trained_job(client.queue, client.store, epochs=3, finish=False)
    lease = seed.seeded_lease(client.store, job_id)
    finisher = threading.Timer(1.5, lambda: client.queue.complete(lease, {"done": True}))
    finisher.start()
    try:
        record = client.job(job_id).wait(timeout=30)
    finally:
        finisher.cancel()

    assert (record.status, record.result) == (JobStatus.SUCCEEDED, {"done": True})
    bar = capsys.readouterr().err
    assert job_id in bar and "3/3" in bar and "succeeded" in bar


def test_wait_gives_up_after_its_timeout_and_the_job_goes_on(client: Client) -> None:
    job = client.submit(TINY)
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=f"job {job.id} is still queued after 0.5 s"):
        job.wait(timeout=0.5, progress=False)
    assert time.monotonic() - started < 5
    assert job.status() is JobStatus.QUEUED


def test_best_trial_is_the_finished_sweeps_choice_on_val_with_its_test_number(
    client: Client,
) -> None:
    sweep = client.job(seed.seed_sweep(client.queue, client.store, [3.0, 2.5, 2.8], finish=True))
    best = sweep.best_trial()
    assert best is not None
    assert (best.trial_id, best.metric, best.status) == ("trial_01", 2.5, "completed")
    assert best.test_metric == pytest.approx(2.5 + seed.TEST_GAP)
    assert [trial.trial_id for trial in sweep.trials()] == ["trial_00", "trial_01", "trial_02"]
    assert sweep.metrics(trial="trial_01")["val_bits_per_dim"].iloc[-1] == pytest.approx(2.5)
    unfinished = client.job(seed.seed_sweep(client.queue, client.store, [3.0, 2.5]))
    assert unfinished.best_trial() is None
    with pytest.raises(NotASweep, match="is a train job; only sweeps have trials"):
        client.submit(TINY).best_trial()


def test_a_client_built_from_settings_needs_no_environment(
    redis_server: RedisProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = replace(Settings.from_env(), redis_url=redis_server.url, prefix="x")
    job = Client(settings).submit(TINY)
    assert redis_client.exists(f"x:job:{job.id}")
