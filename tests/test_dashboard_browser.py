"""The dashboard as a person uses it: `launch_dashboard` serves it, headless Chromium drives it.

Screenshots of every page land in test-output/screenshots/ for a human to look at.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from dashboard.launch import launch_dashboard
from jobs.queue import JobQueue
from jobs.records import JobNotFound
from jobs.run_storage import RunStorage
from jobs.store import JobStore
from tests import dashboard_seed as seed
from tests.redis_fixtures import RedisProcess, free_port

pytestmark = pytest.mark.browser
expect.set_options(timeout=30_000)  # a 2-core CI machine runs the app, Redis and Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PREFIX = "browser"
SCREENSHOTS = Path(__file__).parents[1] / "test-output" / "screenshots"
PASSWORD = "correct horse battery"


class Seeded:
    """What the module's dashboard shows: a trained job, a sweep, a cluster report."""

    def __init__(self, redis_server: RedisProcess, storage: Path) -> None:
        client = redis_server.client()
        for key in client.scan_iter(f"{PREFIX}:*"):
            client.delete(key)
        self.storage = storage  # where the images lie, for every dashboard the module serves
        self.queue = JobQueue(client, PREFIX)
        self.store = JobStore(client, PREFIX, RunStorage(str(storage)))
        self.trained = seed.seed_trained_job(
            self.queue, self.store, epochs=5, image_names=("samples", "completions")
        )
        self.other = seed.seed_trained_job(self.queue, self.store, name="other", offset=0.4)
        self.sweep = seed.seed_sweep(self.queue, self.store, [3.0, 2.5, None, 2.8])
        self.running = seed.seed_trained_job(self.queue, self.store, "running", finish=False)
        seed.seed_cluster(self.store, {"dispatcher-1": [self.running]})


@pytest.fixture(scope="module")
def seeded(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return Seeded(redis_server, tmp_path_factory.mktemp("storage"))


@contextmanager
def serve(
    redis_server: RedisProcess, seeded: Seeded, home: Path, password: str | None
) -> Iterator[str]:
    port = free_port()
    env = {
        "GENFLEET_REDIS_URL": redis_server.url,
        "GENFLEET_PREFIX": PREFIX,
        "GENFLEET_STORAGE": str(seeded.storage),
    }
    process = launch_dashboard("127.0.0.1", port, password, {**env, "GENFLEET_HOME": str(home)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the dashboard did not start (exit {process.poll()})"
                    ) from exc
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def dashboard(
    redis_server: RedisProcess, seeded: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with serve(redis_server, seeded, tmp_path_factory.mktemp("home"), password=None) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # only this run's pages
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def grid_cell(page: Page, text: str) -> Locator:
    """A table cell by its exact text; st.dataframe draws on a canvas and mirrors the visible
    cells into an accessible table inside it."""
    return page.locator("td[role=gridcell]", has_text=re.compile(f"^{re.escape(text)}$"))


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the run that draws the page."""
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    assert page.get_by_test_id("stException").count() == 0


def test_spec_uploaded_in_the_browser_is_queued_and_listed_on_the_jobs_page(
    dashboard: str, seeded: Seeded, page: Page, tmp_path: Path
) -> None:
    spec_file = tmp_path / "browser-upload.yaml"
    spec_file.write_text("name: browser-upload\nmodel: {type: vae}\ndata: {dataset: digits}\n")
    page.goto(f"{dashboard}/submit")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(spec_file)
    expect(page.get_by_text("Valid spec.").first).to_be_visible()
    page.get_by_role("button", name="Submit", exact=True).first.click()
    queued = page.get_by_text(re.compile(r"Queued as job [0-9a-f]+\."))
    expect(queued).to_be_visible()
    job_id = re.search(r"Queued as job ([0-9a-f]+)\.", queued.inner_text()).group(1)
    assert seeded.store.get(job_id).name == "browser-upload"
    assert job_id in seeded.queue.queued()
    settle(page)
    screenshot(page, "submit-uploaded")

    page.goto(dashboard)
    expect(grid_cell(page, "browser-upload")).to_have_count(1)
    expect(grid_cell(page, f"job?job={job_id}")).to_have_count(1)


def test_a_typed_spec_error_is_shown_with_its_line_in_the_browser(
    dashboard: str, page: Page
) -> None:
    page.goto(f"{dashboard}/submit")
    editor = page.get_by_label("Spec (YAML)")
    editor.fill("name: typo\nmodel:\n  type: pixelcnn\ndata:\n  dataset: digitz\n")
    editor.press("Control+Enter")  # Streamlit's "apply" for a text area
    expect(page.get_by_text("1 problem in this spec:")).to_be_visible()
    expect(page.get_by_text("line 5").first).to_be_visible()
    expect(page.get_by_text(re.compile(r"must be one of .*'digits'.*got 'digitz'"))).to_be_visible()


def test_job_page_draws_the_chart_and_loads_every_gallery_image(
    dashboard: str, seeded: Seeded, page: Page
) -> None:
    page.goto(f"{dashboard}/job?job={seeded.trained}")
    expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible()
    # train and val bits/dim, and test's one point after the last epoch
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 3
    images = page.get_by_test_id("stImage").locator("img").filter(visible=True)
    expect(images).to_have_count(1 + 5)  # the chosen epoch, then a strip of the 5 epochs
    widths = images.evaluate_all(
        "images => Promise.all(images.map(image => image.decode().then(() => image.naturalWidth)))"
    )
    assert all(width > 0 for width in widths), widths
    expect(page.get_by_role("button", name="Download PNG").first).to_be_visible()
    settle(page)
    screenshot(page, "job")


# Every image of the open tab decoded with pixels; a broken <img> has naturalWidth 0.
ALL_IMAGES_LOADED = """expected => {
    const images = [...document.querySelectorAll('[data-testid="stImage"] img')]
        .filter(image => image.checkVisibility());
    return images.length === expected
        && images.every(image => image.complete && image.naturalWidth > 0);
}"""


def test_job_page_gallery_read_from_the_runs_storage_loads_every_image_of_every_tab(
    dashboard: str, seeded: Seeded, page: Page
) -> None:
    stored = sorted(path.name for path in (seeded.storage / seeded.trained).rglob("*.png"))
    assert len(stored) == 2 * 5  # samples and completions, 5 epochs each: none lies in Redis
    page.goto(f"{dashboard}/job?job={seeded.trained}")
    for tab in ("samples", "completions"):
        page.get_by_role("tab", name=tab).click()
        # The chosen epoch, then a strip of the 5 epochs; bounded: a loaded CI machine is slow.
        page.wait_for_function(ALL_IMAGES_LOADED, arg=1 + 5, timeout=60_000)
    assert page.get_by_test_id("stAlertContentWarning").count() == 0


def test_job_page_deletes_a_finished_job_after_its_confirmation(
    dashboard: str, seeded: Seeded, page: Page
) -> None:
    job_id = seeded.queue.submit(seed.spec("browser-delete"))  # this test's own job
    seeded.queue.cancel(job_id)
    seeded.store.put_image(job_id, "samples", 1, seed.sample_grid_png(1))
    page.goto(f"{dashboard}/job?job={job_id}")
    page.get_by_role("button", name="Delete job").click()
    expect(page.get_by_text("This cannot be undone.")).to_be_visible()
    assert seeded.store.get(job_id).name == "browser-delete"  # asking deleted nothing
    page.get_by_role("button", name="Delete", exact=True).click()

    expect(page.get_by_text(f"Deleted job {job_id}; removed")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/$"))  # the Jobs page
    with pytest.raises(JobNotFound):
        seeded.store.get(job_id)
    assert not (seeded.storage / job_id).exists()
    settle(page)


def test_live_refresh_keeps_the_users_filter_and_selection(
    dashboard: str, seeded: Seeded, page: Page
) -> None:
    page.goto(dashboard)
    page.get_by_test_id("stSelectbox").filter(has_text="Status").click()
    page.get_by_role("option", name=re.compile(r"^running \(")).click()
    expect(page.get_by_text("Page 1 of 1 · 2 jobs")).to_be_visible()
    page.get_by_test_id("stMultiSelect").filter(has_text="Jobs to act on").click()
    page.get_by_role("option", name=re.compile(f"^{seeded.running}")).click()
    page.keyboard.press("Escape")
    settle(page)

    # A new epoch arrives; only a refresh can bring its value into the table.
    seeded.store.append_metrics(seeded.running, {"epoch": 4, "val_bits_per_dim": 0.4242})
    expect(grid_cell(page, "0.4242")).to_have_count(1)
    expect(page.get_by_role("combobox", name="Status")).to_have_value(re.compile(r"^running"))
    selected = page.get_by_test_id("stMultiSelect").filter(has_text="Jobs to act on")
    expect(selected).to_contain_text(seeded.running)


def test_screenshots_of_every_page(dashboard: str, seeded: Seeded, page: Page) -> None:
    pages = {
        "jobs": ("", page.get_by_text(re.compile(r"Page 1 of 1 · \d+ jobs"))),
        "submit": ("submit", page.get_by_text("Paste a spec, upload a file")),
        "job": (f"job?job={seeded.trained}", page.locator(".js-plotly-plot")),
        "sweep": (f"sweep?job={seeded.sweep}", page.locator(".js-plotly-plot .parcoords")),
        "compare": (
            f"compare?runs={seeded.trained},{seeded.other},{seeded.sweep}/trial_01",
            page.get_by_test_id("stImage"),
        ),
        "cluster": ("cluster", page.get_by_text("Nodes alive")),
    }
    for name, (path, drawn) in pages.items():
        page.goto(f"{dashboard}/{path}")
        expect(drawn.first).to_be_visible()
        settle(page)
        assert screenshot(page, name).stat().st_size > 10_000


def test_with_a_password_only_the_login_form_shows_until_it_is_given(
    redis_server: RedisProcess, seeded: Seeded, page: Page, tmp_path: Path
) -> None:
    with serve(redis_server, seeded, tmp_path, password=PASSWORD) as base:
        page.goto(f"{base}/job?job={seeded.trained}")
        password = page.get_by_label("Password", exact=True)
        expect(password).to_be_visible()
        settle(page)
        assert page.get_by_test_id("stSidebarNav").count() == 0
        assert page.locator(".js-plotly-plot").count() == 0
        screenshot(page, "login")

        password.fill("not it")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_text("Wrong password.")).to_be_visible()
        password.fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
