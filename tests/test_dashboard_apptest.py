"""The dashboard's pages, run by Streamlit's AppTest against a real Redis seeded through the
real queue and store (tests/dashboard_seed.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from streamlit.testing.v1 import AppTest

from dashboard.launch import UnsafeBindError, launch_dashboard, run_dashboard
from dashboard.spec_builder import parse_range
from jobs.queue import JobQueue
from jobs.recipes import RECIPES
from jobs.records import JobNotFound, JobStatus
from jobs.run_storage import RunStorage
from jobs.scheduling import Demand
from jobs.search_domains import SEARCH_DOMAINS
from jobs.spec import tunable_paths
from jobs.store import JobStore, redis_full_text
from tests import dashboard_seed as seed
from tests.redis_fixtures import RedisProcess

APP = Path(__file__).parents[1] / "dashboard" / "app.py"
EXAMPLES = Path(__file__).parents[1] / "jobs" / "examples"
PREFIX = "dash"


@pytest.fixture
def jobs_api(
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[tuple[JobQueue, JobStore]]:
    """The queue and store the app sees, through the environment variables it reads."""
    monkeypatch.setenv("GENFLEET_REDIS_URL", redis_server.url)
    monkeypatch.setenv("GENFLEET_PREFIX", PREFIX)
    monkeypatch.setenv("GENFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("GENFLEET_STORAGE", str(tmp_path / "storage"))
    monkeypatch.delenv("GENFLEET_DASHBOARD_PASSWORD", raising=False)
    yield (
        JobQueue(redis_client, PREFIX),
        JobStore(redis_client, PREFIX, RunStorage(str(tmp_path / "storage"))),
    )


def open_page(page: str | None = None, **query: str) -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.query_params.update(query)
    app.run()
    if page is not None:
        app.switch_page(page).run()
    assert not app.exception, [error.value for error in app.exception]
    return app


def click(app: AppTest, label: str) -> AppTest:
    next(button for button in app.button if button.label == label).click()
    app.run()
    assert not app.exception, [error.value for error in app.exception]
    return app


def figure(app: AppTest, index: int = 0) -> dict:
    return json.loads(app.get("plotly_chart")[index].proto.spec)


def texts(elements: Iterable[Any]) -> str:
    return "\n".join(str(element.value) for element in elements)


# Submit


def test_submit_page_queues_a_pasted_spec_once_when_submit_is_clicked_twice(jobs_api):
    queue, store = jobs_api
    app = open_page("views/submit.py")
    app.text_area(key="submit.text").input((EXAMPLES / "pixelcnn_digits.yaml").read_text()).run()
    assert "Valid spec." in texts(app.success)

    app.button(key="yaml.submit").click().run()
    app.button(key="yaml.submit").click().run()  # the double click

    queued = queue.queued()
    assert len(queued) == 1
    assert store.get(queued[0]).name == "pixelcnn-digits"
    assert store.get(queued[0]).status is JobStatus.QUEUED
    assert f"Queued as job `{queued[0]}`." in texts(app.success)


def test_submit_page_submits_another_copy_only_when_asked(jobs_api):
    queue, _ = jobs_api
    app = open_page("views/submit.py")
    app.text_area(key="submit.text").input((EXAMPLES / "vae_digits.yaml").read_text()).run()
    app.button(key="yaml.submit").click().run()
    app.button(key="yaml.new_copy").click().run()
    app.button(key="yaml.submit").click().run()
    assert len(queue.queued()) == 2


def test_submit_page_shows_each_error_beside_the_line_it_names(jobs_api):
    queue, _ = jobs_api
    text = "name: bad\nmodel:\n  type: pixelcnn\ndata:\n  dataset: digits\ntrain:\n  lr: -0.1\n"
    app = open_page("views/submit.py")
    app.text_area(key="submit.text").input(text).run()

    assert "1 problem in this spec:" in texts(app.error)
    assert "**line 7** · `train.lr`: must be > 0, got -0.1" in texts(app.markdown)
    assert "   7 |   lr: -0.1" in texts(app.markdown)
    assert all(button.key != "yaml.submit" for button in app.button)
    assert queue.queued() == []


def test_submit_page_loads_an_example_and_clones_a_job_named_in_the_url(jobs_api):
    queue, _ = jobs_api
    job_id = queue.submit(seed.spec("to-clone", "dcgan"))
    app = open_page("views/submit.py", clone=job_id)
    assert "name: to-clone" in app.text_area(key="submit.text").value
    assert "type: dcgan" in app.text_area(key="submit.text").value

    app.selectbox(key="submit.example").select("vae_digits")
    click(app, "Load example")
    assert app.text_area(key="submit.text").value == (EXAMPLES / "vae_digits.yaml").read_text()


def test_a_draft_spec_and_the_jobs_filters_survive_a_visit_to_another_page(jobs_api):
    app = open_page()
    app.selectbox(key="jobs.status").select("running").run()
    app.switch_page("views/submit.py").run()
    app.text_area(key="submit.text").input("name: draft\n").run()
    app.switch_page("views/cluster.py").run()
    app.switch_page("views/submit.py").run()
    assert app.text_area(key="submit.text").value == "name: draft\n"
    app.switch_page("views/jobs.py").run()
    assert app.selectbox(key="jobs.status").value == "running"


def test_form_builder_builds_a_sweep_with_search_ranges_and_submits_it(jobs_api):
    queue, store = jobs_api
    app = open_page("views/submit.py")
    app.radio(key="form.kind").set_value("sweep").run()
    app.selectbox(key="form.model").select("gated_pixelcnn").run()
    app.number_input(key="form.params.gated_pixelcnn.layers").set_value(3)
    app.selectbox(key="form.range_path").select("train.lr")
    app.selectbox(key="form.range_domain").select("loguniform")
    app.text_input(key="form.range_values").input("0.0001, 0.01")
    click(app, "Add")
    app.selectbox(key="form.range_path").select("model.params.channels")
    app.selectbox(key="form.range_domain").select("choice")
    app.text_input(key="form.range_values").input("16, 32")
    click(app, "Add")

    produced = texts(app.code)
    assert "train.lr: {loguniform: [0.0001, 0.01]}" in produced
    assert "model.params.channels: {choice: [16, 32]}" in produced
    app.button(key="form.submit").click().run()

    [job_id] = queue.queued()
    record = store.get(job_id)
    assert record.kind == "sweep"
    assert record.model_type == "gated_pixelcnn"
    assert record.spec["model"]["params"]["layers"] == 3
    assert record.spec["sweep"]["space"] == {
        "train.lr": {"loguniform": [0.0001, 0.01]},
        "model.params.channels": {"choice": [16, 32]},
    }


def test_form_builder_starts_from_each_models_default_recipe(jobs_api):
    queue, store = jobs_api
    app = open_page("views/submit.py")
    app.selectbox(key="form.model").select("pixelcnn_pp").run()
    assert app.number_input(key="form.train.pixelcnn_pp.ema_decay").value == 0.999
    app.selectbox(key="form.model").select("dcgan").run()  # no recipe: TrainSpec's defaults
    assert app.number_input(key="form.train.dcgan.lr").value == 0.001
    app.selectbox(key="form.model").select("gated_pixelcnn").run()
    app.number_input(key="form.train.gated_pixelcnn.warmup_steps").set_value(10).run()
    app.button(key="form.submit").click().run()

    [job_id] = queue.queued()
    train = store.get(job_id).spec["train"]
    recipe = RECIPES["gated_pixelcnn"]
    assert (train["lr"], train["lr_schedule"]) == (recipe["lr"], recipe["lr_schedule"])
    assert train["warmup_steps"] == 10


def test_form_builder_bounds_the_wait_only_when_asked(jobs_api):
    queue, store = jobs_api
    app = open_page("views/submit.py")
    assert app.number_input(key="form.scheduling.wait_timeout").value is None
    assert "scheduling" not in texts(app.code)
    app.number_input(key="form.scheduling.wait_timeout").set_value(600).run()
    assert "scheduling:\n  wait_timeout: 600.0\n" in texts(app.code)
    app.button(key="form.submit").click().run()

    [job_id] = queue.queued()
    assert store.get(job_id).spec["scheduling"] == {"wait_timeout": 600.0}


def test_form_builder_offers_every_path_and_domain_a_sweep_space_accepts(jobs_api):
    queue, store = jobs_api
    app = open_page("views/submit.py")
    app.radio(key="form.kind").set_value("sweep").run()
    app.selectbox(key="form.model").select("vae").run()
    assert app.selectbox(key="form.range_path").options == tunable_paths("vae")
    assert app.selectbox(key="form.range_domain").options == list(SEARCH_DOMAINS)
    app.selectbox(key="form.range_path").select("data.val_fraction")  # not offered before issue 15
    app.selectbox(key="form.range_domain").select("uniform")
    app.text_input(key="form.range_values").input("0.1, 0.2")
    click(app, "Add")
    app.button(key="form.submit").click().run()

    [job_id] = queue.queued()
    space = store.get(job_id).spec["sweep"]["space"]
    assert space == {"data.val_fraction": {"uniform": [0.1, 0.2]}}


def test_form_builder_says_why_a_range_is_rejected(jobs_api):
    app = open_page("views/submit.py")
    app.radio(key="form.kind").set_value("sweep").run()
    app.selectbox(key="form.range_path").select("train.lr")
    app.selectbox(key="form.range_domain").select("uniform")
    app.text_input(key="form.range_values").input("0.1")
    click(app, "Add")
    assert "train.lr: uniform takes two numbers 'low, high', got '0.1'" in texts(app.warning)


def test_parse_range_reads_numbers_words_and_flags():
    assert parse_range("train.optimizer", "choice", "adam, sgd").values == ["adam", "sgd"]
    assert parse_range("train.lr", "loguniform", "1e-4, 0.01").values == [0.0001, 0.01]
    assert parse_range("model.params.conditional", "grid", "true, false").values == [True, False]
    with pytest.raises(ValueError, match="randint takes two integers"):
        parse_range("train.batch_size", "randint", "16, 64.5")
    assert tunable_paths("vae")[:2] == ["model.params.latent_dim", "model.params.channels"]


# Jobs


def test_jobs_page_cancels_the_selected_queued_job(jobs_api):
    queue, store = jobs_api
    keep, cancel = seed.seed_queued_jobs(queue, 2)
    app = open_page()
    assert sorted(app.dataframe[0].value["id"].str.removeprefix("job?job=")) == sorted(
        [keep, cancel]
    )

    app.multiselect(key="jobs.selected").select(cancel)
    click(app, "Cancel")

    assert store.get(cancel).status is JobStatus.CANCELLED
    assert queue.queued() == [keep]
    assert f"{cancel}: cancelled" in texts(app.success)
    assert sorted(app.dataframe[0].value["status"]) == ["cancelled", "queued"]


def test_jobs_page_retries_and_reprioritises_selected_jobs(jobs_api):
    queue, store = jobs_api
    [job_id] = seed.seed_queued_jobs(queue, 1)
    queue.cancel(job_id)
    app = open_page()
    app.multiselect(key="jobs.selected").select(job_id)
    click(app, "Retry")
    assert store.get(job_id).status is JobStatus.QUEUED

    app.number_input(key="jobs.new_priority").set_value(9)
    click(app, "Set priority")
    assert store.get(job_id).priority == 9

    click(app, "Retry")  # a queued job cannot be retried: the page says why
    assert f"cannot retry job {job_id}: it is queued" in texts(app.warning)


def test_jobs_page_pages_on_the_server_and_filters_by_status(jobs_api):
    queue, _ = jobs_api
    job_ids = seed.seed_queued_jobs(queue, 60)
    for job_id in job_ids[:3]:
        queue.cancel(job_id)
    app = open_page()
    assert len(app.dataframe[0].value) == 50
    assert "Page 1 of 2 · 60 jobs" in texts(app.caption)

    click(app, "Next")
    assert len(app.dataframe[0].value) == 10
    assert "Page 2 of 2 · 60 jobs" in texts(app.caption)

    app.selectbox(key="jobs.status").select("cancelled").run()
    table = app.dataframe[0].value
    assert sorted(table["id"].str.removeprefix("job?job=")) == sorted(job_ids[:3])
    assert "Page 1 of 1 · 3 jobs" in texts(app.caption)


def test_jobs_page_shows_why_a_queued_job_waits(jobs_api):
    queue, _ = jobs_api
    [job_id] = seed.seed_queued_jobs(queue, 1)
    queue.set_pending_reason(job_id, "needs 4 GPUs, 2 free, 3 jobs ahead")
    app = open_page()
    assert app.dataframe[0].value["why waiting"].tolist() == ["needs 4 GPUs, 2 free, 3 jobs ahead"]


def test_jobs_page_deletes_the_selected_finished_jobs_once_the_delete_is_confirmed(
    jobs_api, tmp_path
):
    queue, store = jobs_api
    first = seed.seed_trained_job(queue, store, "first")
    second = seed.seed_trained_job(queue, store, "second")
    [kept] = seed.seed_queued_jobs(queue, 1)
    app = open_page()
    app.multiselect(key="jobs.selected").select(first).select(second).run()
    click(app, "Delete selected")
    asked = f"Delete `{first}` (first), `{second}` (second) with their metrics"
    assert asked in texts(app.warning)
    assert store.get(first).status is JobStatus.SUCCEEDED  # asking deletes nothing

    app.button(key="jobs.delete.confirm").click().run()

    for job_id in (first, second):
        with pytest.raises(JobNotFound):
            store.get(job_id)
        assert not (tmp_path / "storage" / job_id).exists()
        assert f"Deleted job {job_id}; removed `{job_id}` from the runs' storage." in texts(
            app.success
        )
    assert app.dataframe[0].value["id"].str.removeprefix("job?job=").tolist() == [kept]


def test_jobs_page_refuses_a_selection_with_a_running_job_and_deletes_none_of_it(
    jobs_api, tmp_path
):
    queue, store = jobs_api
    finished = seed.seed_trained_job(queue, store, "finished")
    running = seed.seed_trained_job(queue, store, "running", finish=False)
    app = open_page()
    app.multiselect(key="jobs.selected").select(finished).select(running).run()
    click(app, "Delete selected")
    app.button(key="jobs.delete.confirm").click().run()

    assert f"Nothing deleted: job {running} is running: cancel it first" in texts(app.error)
    assert store.get(finished).status is JobStatus.SUCCEEDED
    assert store.get(running).status is JobStatus.RUNNING
    assert (tmp_path / "storage" / finished).is_dir()
    assert len(app.dataframe[0].value) == 2


# Job


def test_job_page_shows_curves_images_checkpoints_events_and_logs(jobs_api):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store, image_names=("samples", "completions"))
    app = open_page("views/job.py", job=job_id)

    assert app.title[0].value == "trained"
    traces = {trace["name"]: trace for trace in figure(app)["data"]}
    assert set(traces) == {"train_bits_per_dim", "val_bits_per_dim", "test_bits_per_dim"}
    assert traces["test_bits_per_dim"]["x"] == [3]  # one point, after the last epoch
    assert traces["val_bits_per_dim"]["y"] == [
        seed.metrics_row(epoch)["val_bits_per_dim"] for epoch in (1, 2, 3)
    ]
    # Per image name: the chosen epoch, plus a strip of the 3 epochs.
    assert len(app.image) == 2 * (1 + 3)
    assert len(app.get("download_button")) == 2
    assert "Epoch 3." in app.image[0].proto.imgs[0].caption
    events, checkpoints = app.dataframe
    assert events.value["status"].tolist() == ["queued", "running", "succeeded"]
    assert checkpoints.value["epoch"].tolist() == [1, 2, 3]
    assert "epoch 3: val_bits_per_dim" in texts(app.code)
    numbers = {metric.label: metric.value for metric in app.metric}
    last = seed.metrics_row(3, last=True)
    assert numbers["Val bits/dim"] == f"{last['val_bits_per_dim']:.4f}"
    assert numbers["Test bits/dim"] == f"{last['test_bits_per_dim']:.4f}"


def test_a_finished_sweeps_job_page_shows_its_best_trial_chosen_on_val_with_its_test_number(
    jobs_api,
):
    queue, store = jobs_api
    sweep_id = seed.seed_sweep(queue, store, [3.0, 2.5, 2.8], finish=True)
    app = open_page("views/job.py", job=sweep_id)

    numbers = {metric.label: metric.value for metric in app.metric}
    assert numbers["Best trial's val bits/dim"] == "2.5000"
    assert numbers["Best trial's test bits/dim"] == f"{2.5 + seed.TEST_GAP:.4f}"
    assert "Curves of the best trial, trial_01" in texts(app.subheader)
    assert "No metrics yet" not in texts(app.info)
    [trace] = [t for t in figure(app)["data"] if t["name"] == "test_bits_per_dim"]
    assert trace["y"][-1] == pytest.approx(2.5 + seed.TEST_GAP)
    assert len(app.image) == 1 + 3  # the best trial's samples


def test_jobs_page_lists_val_and_test_bits_per_dim_of_runs_and_of_a_sweeps_best_trial(jobs_api):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store)
    sweep_id = seed.seed_sweep(queue, store, [3.0, 2.5], finish=True)
    table = open_page().dataframe[0].value.set_index("name")
    assert table.loc["trained", "test bits/dim"] == pytest.approx(
        seed.metrics_row(3, last=True)["test_bits_per_dim"]
    )
    assert table.loc["sweep", "val bits/dim"] == pytest.approx(2.5)
    assert table.loc["sweep", "test bits/dim"] == pytest.approx(2.5 + seed.TEST_GAP)
    assert {job_id, sweep_id} == set(table["id"].str.removeprefix("job?job="))


def test_job_page_epoch_slider_shows_that_epochs_grid(jobs_api):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store)
    app = open_page("views/job.py", job=job_id)
    app.select_slider(key="job.samples.epoch").set_value(1).run()
    assert "Epoch 1." in app.image[0].proto.imgs[0].caption


def test_job_page_for_a_trial_reads_that_trials_metrics_and_images(jobs_api):
    queue, store = jobs_api
    sweep_id = seed.seed_sweep(queue, store, [3.0, 2.5])
    app = open_page("views/job.py", job=sweep_id, trial="trial_01")
    assert app.title[0].value == "sweep · trial trial_01"
    [trace] = [t for t in figure(app)["data"] if t["name"] == "val_bits_per_dim"]
    assert trace["y"][-1] == pytest.approx(2.5)
    assert len(app.image) == 1 + 3


def test_job_page_says_when_the_job_does_not_exist(jobs_api):
    app = open_page("views/job.py", job="nosuchjob")
    assert "No job `nosuchjob`." in texts(app.error)


def test_job_page_deletes_a_finished_job_only_once_the_delete_is_confirmed(jobs_api, tmp_path):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store)
    app = open_page("views/job.py", job=job_id)
    click(app, "Delete job")
    assert "This cannot be undone." in texts(app.warning)
    app.button(key=f"job.delete.{job_id}.keep").click().run()
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    assert "This cannot be undone." not in texts(app.warning)
    assert (tmp_path / "storage" / job_id).is_dir()

    click(app, "Delete job")
    app.button(key=f"job.delete.{job_id}.confirm").click().run()

    with pytest.raises(JobNotFound):
        store.get(job_id)
    assert not (tmp_path / "storage" / job_id).exists()
    assert app.title[0].value == "Jobs"  # back on the Jobs page, which says what went
    assert f"Deleted job {job_id}; removed `{job_id}` from the runs' storage." in texts(app.success)


def test_job_page_offers_no_delete_for_a_running_job_and_says_to_cancel_it_first(jobs_api):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store, finish=False)
    app = open_page("views/job.py", job=job_id)
    assert "To delete this job, cancel it first: it is running." in texts(app.caption)
    assert all(button.label != "Delete job" for button in app.button)


def stored_image(storage: Path, job_id: str, name: str, epoch: int) -> Path:
    [path] = (storage / job_id / "images" / "job").glob(f"{name}-{epoch:06d}-*.png")
    return path


def test_job_page_shows_a_missing_image_file_as_a_warning_naming_it_and_draws_the_rest(
    jobs_api, tmp_path
):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store)
    missing = stored_image(tmp_path / "storage", job_id, "samples", 2)
    missing.unlink()
    app = open_page("views/job.py", job=job_id)

    [warning] = [element.value for element in app.warning]
    assert warning.startswith("samples, epoch 2: ") and missing.name in warning
    captions = [image.proto.imgs[0].caption for image in app.image]
    assert len(captions) == 1 + 2 and "Epoch 3." in captions[0]
    assert captions[1:] == ["epoch 1", "epoch 3"]
    assert len(app.get("download_button")) == 1


def test_job_page_shows_a_damaged_latest_grid_as_a_warning_without_its_download(jobs_api, tmp_path):
    queue, store = jobs_api
    job_id = seed.seed_trained_job(queue, store)
    stored_image(tmp_path / "storage", job_id, "samples", 3).write_bytes(b"not the png")
    app = open_page("views/job.py", job=job_id)

    warnings = texts(app.warning)
    assert warnings.count("samples, epoch 3: ") == 2  # the chosen grid and its thumbnail
    assert "damaged (11 bytes, the index recorded" in warnings
    assert [image.proto.imgs[0].caption for image in app.image] == ["epoch 1", "epoch 2"]
    assert app.get("download_button") == []


# Sweep


def test_sweep_page_ranks_trials_by_metric_and_highlights_the_best(jobs_api):
    queue, store = jobs_api
    sweep_id = seed.seed_sweep(queue, store, [3.0, 2.5, None, 2.8])
    app = open_page("views/sweep.py", job=sweep_id)

    table = app.dataframe[0].value
    assert table["trial"].tolist() == [
        f"job?job={sweep_id}&trial=trial_{index}" for index in ("01", "03", "00", "02")
    ]
    assert table["best"].tolist() == ["★", "", "", ""]
    assert table["stopped because"].tolist()[2] == "stopped early by ASHA after epoch 1"
    gap = seed.TEST_GAP
    assert table["test_bits_per_dim"].tolist()[:2] == pytest.approx([2.5 + gap, 2.8 + gap])
    best = f"Best trial `trial_01`: val_bits_per_dim = 2.5000, test_bits_per_dim = {2.55:.4f}"
    assert best in texts(app.success)
    curves, parallel = figure(app, 0), figure(app, 1)
    assert len(curves["data"]) == 4
    labels = [dimension["label"] for dimension in parallel["data"][0]["dimensions"]]
    assert labels == ["log10(train.lr)", "model.params.channels", "val_bits_per_dim"]


# Compare


def test_compare_page_overlays_curves_and_shows_grids_at_the_latest_shared_epoch(jobs_api):
    queue, store = jobs_api
    first = seed.seed_trained_job(queue, store, name="first", epochs=5)
    second = seed.seed_trained_job(queue, store, name="second", offset=0.5)
    sweep_id = seed.seed_sweep(queue, store, [3.0, 2.5])
    trial = f"{sweep_id}/trial_01"
    app = open_page("views/compare.py", runs=f"{first},{second},{trial}")

    names = [trace["name"] for trace in figure(app)["data"]]
    assert names == [f"{run} · val_bits_per_dim" for run in (first, second, trial)]
    captions = [image.proto.imgs[0].caption for image in app.image]
    assert captions == [f"{run} · samples · epoch 3" for run in (first, second, trial)]

    app.select_slider(key="compare.epoch").set_value(5).run()  # only `first` got this far
    assert [image.proto.imgs[0].caption for image in app.image] == [f"{first} · samples · epoch 5"]
    assert f"{second}: no samples at epoch 5" in texts(app.caption)

    app.select_slider(key="compare.epoch").set_value(1).run()
    assert app.image[0].proto.imgs[0].caption == f"{first} · samples · epoch 1"

    numbers = app.dataframe[0].value.set_index("run")
    assert numbers["epoch"].tolist() == [5, 3, 3]
    assert numbers.loc[second, "test bits/dim"] == pytest.approx(
        seed.metrics_row(3, 0.5, last=True)["test_bits_per_dim"]
    )
    assert numbers.loc[trial, "val bits/dim"] == pytest.approx(2.5)
    assert numbers.loc[trial, "test bits/dim"] == pytest.approx(2.5 + seed.TEST_GAP)


def test_compare_page_asks_for_at_least_two_runs(jobs_api):
    queue, store = jobs_api
    only = seed.seed_trained_job(queue, store)
    app = open_page("views/compare.py", runs=only)
    assert "Pick two to four jobs or trials." in texts(app.info)
    assert app.get("plotly_chart") == []


# Cluster


def test_cluster_page_says_when_no_dispatcher_has_reported(jobs_api):
    app = open_page("views/cluster.py")
    assert "No dispatcher has reported." in texts(app.warning)


def test_cluster_page_sums_resources_of_alive_nodes_and_lists_every_dispatchers_jobs(jobs_api):
    queue, store = jobs_api
    first = seed.seed_trained_job(queue, store, "first", finish=False)
    second = seed.seed_trained_job(queue, store, "second", finish=False)
    seed.seed_cluster(store, {"dispatcher-1": [first], "dispatcher-2": [second]})
    app = open_page("views/cluster.py")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics == {
        "Nodes alive": "2 / 3",
        "CPUs in use": "3 / 24",
        "GPUs in use": "1 / 1",
        "Running jobs": "2",
    }
    nodes, dispatchers = (frame.value for frame in app.dataframe)
    assert nodes["node"].tolist() == ["head", "worker-1", "worker-2"]
    assert sorted(nodes["running jobs"][0]) == sorted([first, second])
    assert dispatchers["dispatcher"].tolist() == ["dispatcher-2", "dispatcher-1"]  # newest first
    assert all(re.fullmatch(r"\d+ s ago", age) for age in dispatchers["last report"])
    assert dispatchers["running jobs"].tolist() == [1, 1]


WAITING_FOR_GPUS = "waiting for nodes: needs 2 GPUs; the cluster has 1 GPU"


def seed_waiting(queue: JobQueue, store: JobStore) -> list[str]:
    """Two queued jobs a dispatcher explained, and the demand it sent for them."""
    job_ids = seed.seed_queued_jobs(queue, 2)
    bundles = [{"CPU": 1.0, "GPU": 1.0}] * 2 + [{"CPU": 2.0}]
    demand = Demand.grouped(bundles, job_ids, sent_at=time.time(), dispatcher="dispatcher-1")
    reasons = {job_ids[0]: WAITING_FOR_GPUS, job_ids[1]: "needs 2 CPUs, 0 free, 1 job ahead"}
    seed.seed_cluster(store, {"dispatcher-1": []}, waiting=reasons, demand=demand)
    return job_ids


def test_cluster_page_shows_the_waiting_jobs_why_and_what_was_asked_of_the_autoscaler(jobs_api):
    queue, store = jobs_api
    job_ids = seed_waiting(queue, store)
    app = open_page("views/cluster.py")
    _, waiting, bundles, dispatchers = (frame.value for frame in app.dataframe)
    assert waiting["job"].str.removeprefix("job?job=").tolist() == job_ids
    assert waiting["why waiting"].tolist() == [
        WAITING_FOR_GPUS,
        "needs 2 CPUs, 0 free, 1 job ahead",
    ]
    assert bundles.to_dict("records") == [
        {"CPUs": 1.0, "GPUs": 1.0, "bundles": 2},
        {"CPUs": 2.0, "GPUs": 0.0, "bundles": 1},
    ]
    captions = texts(app.caption)
    assert "Largest cluster (GENFLEET_MAX_CLUSTER): gpus=8" in captions
    requested = (
        r"Requested: 4 CPUs and 2 GPUs \(3 bundles\) for 2 waiting jobs; sent \d+ s ago by "
        r"dispatcher-1\."
    )
    assert re.search(requested, captions), captions
    assert dispatchers["dispatcher"].tolist() == ["dispatcher-1"]


def test_cluster_page_says_when_no_job_waits_and_nothing_was_asked(jobs_api):
    _, store = jobs_api
    seed.seed_cluster(store, {"dispatcher-1": []})
    captions = texts(open_page("views/cluster.py").caption)
    assert "No job waits." in captions
    assert "Nothing sent yet." in captions


def test_cluster_page_shows_redis_memory_against_its_maxmemory(jobs_api, redis_client):
    redis_client.config_set("maxmemory", 2**30)
    try:
        app = open_page("views/cluster.py")
    finally:
        redis_client.config_set("maxmemory", 0)  # the server is shared by the whole session
    [memory] = app.get("progress")
    assert re.fullmatch(r"Redis memory: [\d.]+ (KiB|MiB) of 1.0 GiB \(\d+%\)", memory.text), (
        memory.text
    )
    assert app.error == []


def test_cluster_page_says_redis_is_full_since_a_dispatcher_saw_a_write_refused(jobs_api):
    _, store = jobs_api
    full_since = time.time() - 150
    seed.seed_cluster(store, {"dispatcher-1": []}, redis_full_since=full_since)
    app = open_page("views/cluster.py")
    assert texts(app.error) == redis_full_text(full_since)
    assert texts(app.error).startswith("Redis is full since ")


def test_cluster_page_says_redis_is_full_when_it_is_before_any_dispatcher_reports(
    jobs_api, redis_client
):
    redis_client.config_set("maxmemory", 2**16)  # below what an empty Redis holds
    try:
        app = open_page("views/cluster.py")
    finally:
        redis_client.config_set("maxmemory", 0)
    assert texts(app.error) == redis_full_text(None)
    assert app.get("progress")[0].value == 100
    assert "No dispatcher has reported." in texts(app.warning)


def test_cluster_page_shows_no_redis_memory_where_an_acl_refuses_info(
    jobs_api, redis_server, redis_client, monkeypatch
):
    user = "dashboard-without-info"
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=["+not-info"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-info"],
    )
    monkeypatch.setenv(
        "GENFLEET_REDIS_URL", f"redis://{user}:not-info@127.0.0.1:{redis_server.port}/0"
    )
    try:
        app = open_page("views/cluster.py")
    finally:
        redis_client.acl_deluser(user)
    assert app.get("progress") == []
    assert "Redis memory" not in texts(app.caption)
    assert "No dispatcher has reported." in texts(app.warning)


def test_jobs_page_says_what_was_asked_of_the_autoscaler_for_the_waiting_jobs(jobs_api):
    queue, store = jobs_api
    seed_waiting(queue, store)
    captions = texts(open_page().caption)
    assert (
        "Asked of Ray's autoscaler for the waiting jobs: 4 CPUs and 2 GPUs (3 bundles) for 2 "
        "waiting jobs." in captions
    )


# Login and launch


def test_login_gate_hides_every_page_until_the_password_is_given(jobs_api, monkeypatch):
    queue, _ = jobs_api
    seed.seed_queued_jobs(queue, 3)
    monkeypatch.setenv("GENFLEET_DASHBOARD_PASSWORD", "correct horse")
    app = AppTest.from_file(str(APP), default_timeout=60).run()
    assert [title.value for title in app.title] == ["genfleet"]
    assert app.dataframe == [] and app.toggle == []

    app.text_input(key="login_password").input("wrong")
    app.button[0].click().run()
    assert "Wrong password." in texts(app.error)
    assert app.dataframe == []

    app.text_input(key="login_password").input("correct horse")
    app.button[0].click().run()
    assert [title.value for title in app.title] == ["Jobs"]
    assert len(app.dataframe[0].value) == 3


def test_launch_refuses_a_public_address_without_a_password(monkeypatch, capsys):
    with pytest.raises(UnsafeBindError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
        launch_dashboard("0.0.0.0", 8501, password=None)
    monkeypatch.setenv("GENFLEET_DASHBOARD_ADDRESS", "192.0.2.7")
    monkeypatch.delenv("GENFLEET_DASHBOARD_PASSWORD", raising=False)
    assert run_dashboard() == 2
    assert "GENFLEET_DASHBOARD_PASSWORD" in capsys.readouterr().err
