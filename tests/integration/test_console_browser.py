"""The operator console in a real browser (Playwright driving Debian's Chromium) against a
real ``scrapy scheduler`` subprocess whose jobs are real ``scrapy crawl prices`` processes
against the sandbox price API (slowed down, so a job is seen running).

Covered: signing in; a task form with an invalid cron (its error shown), then a valid one;
triggering it; the job going running -> succeeded in an open jobs page and job page without
a reload, the log tail showing lines while it runs; ``<script>``/``<img onerror>`` in the
task name, description, log lines and items shown as text and never run; a read-only key's
buttons disabled and its forced requests refused by the server; every state-changing
console route refusing a request without the CSRF token (and a foreign origin's); a job
page opened while its job waits tailing the log once it starts; a run's progress chart and
the regions' graph drawn from a real controller's records. Full-page screenshots go to
``HYDRA_TEST_ARTIFACTS`` (default ``test-artifacts/console/``), read at import (the autouse
fixture hides HYDRA_* variables from tests).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from crawlers.sandbox import SandboxServer
from tests.consolefixtures import (
    OPERATOR_KEY,
    READER_KEY,
    SchedulerProcess,
    launch_chromium,
    screenshot,
    sign_in,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=1">'
#: a price ID the sandbox answers (no "/"): it ends up in the job's items and, at DEBUG,
#: in its log lines
ID_SCRIPT = "<script>window.__xss=1"
#: 0.05 s a request, one batch at a time: a job of 120 IDs fetches for ~6 s
DELAY = 0.05
IDS = [IMG, ID_SCRIPT, *(str(n) for n in range(1, 119))]
WAIT_MS = 60_000
#: everything that would show that markup from the server ran or became elements
NOTHING_RAN = """() => window.__xss === undefined
    && document.querySelectorAll('img[src="x"]').length === 0
    && [...document.scripts].every((s) => s.src.endsWith('/ui/static/console.js'))"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(delay_seconds=DELAY) as server:
        yield server


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchedulerProcess]:
    with SchedulerProcess(tmp_path_factory.mktemp("console")) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def operator(browser: Browser, scheduler: SchedulerProcess) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    sign_in(context.new_page(), scheduler.base_url, OPERATOR_KEY)
    yield context
    context.close()


@pytest.fixture
def reader(browser: Browser, scheduler: SchedulerProcess) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    sign_in(context.new_page(), scheduler.base_url, READER_KEY)
    yield context
    context.close()


def _settings(tmp: Path, name: str) -> dict[str, Any]:
    return {
        "HYDRA_SINKS": f"jsonl://{tmp}/{name}.jsonl",
        "HYDRA_DEADLETTER_PATH": str(tmp / f"{name}-dl.jsonl"),
        "HYDRA_QUEUE_PREFETCH": 1,  # one batch at a time: the job lasts
        "HYDRA_PROGRESS_INTERVAL_SECONDS": 1,  # a log line a second while it runs
        "LOG_LEVEL": "DEBUG",  # items (their IDs) in the log
    }


def _task(sandbox: SandboxServer, tmp: Path, name: str, ids: int) -> dict[str, Any]:
    """A triggered prices task of ``ids`` IDs (0.05 s each, one at a time)."""
    return {
        "spider": "prices",
        "schedule": {"trigger": "external"},
        "args": {"ids": ",".join(map(str, range(ids))), "url_template": sandbox.url_template},
        "settings": _settings(tmp, name),
    }


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)


def _post(page: Page, path: str, token: str | None, header: bool = False) -> int:
    """A POST from the page's own origin (fetch with its cookie), a form body with
    ``token`` (None: without one) or the token as X-CSRF-Token; the status seen."""
    status: int = page.evaluate(
        """async ([path, token, header]) => {
            const body = new URLSearchParams({section: "args", key: "k", value: "v"});
            const headers = {"Content-Type": "application/x-www-form-urlencoded"};
            if (token !== null && header) headers["X-CSRF-Token"] = token;
            if (token !== null && !header) body.set("csrf_token", token);
            const answer = await fetch(path, {method: "POST", body, headers, redirect: "manual"});
            return answer.type === "opaqueredirect" ? 303 : answer.status;
        }""",
        [path, token, header],
    )
    return status


def _csrf(page: Page) -> str:
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert token
    return token


def test_an_operator_creates_triggers_and_watches_a_job_live(
    operator: BrowserContext,
    scheduler: SchedulerProcess,
    sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    base = scheduler.base_url
    form = operator.pages[0]
    form.goto(f"{base}/ui/tasks/new")
    form.fill("#f-name", SCRIPT)
    form.fill("#f-description", f"prices {SCRIPT} {IMG}")
    form.fill("#f-spider", "prices")
    form.select_option("#f-schedule-kind", "cron")
    form.fill("#f-schedule", "61 * * * *")
    args = {"ids": ",".join(IDS), "url_template": sandbox.url_template}
    form.fill("#f-args", _yaml(args))
    form.fill("#f-settings", _yaml(_settings(tmp_path, "console")))
    form.click("#save")
    expect(form.locator("#form-errors")).to_be_visible()
    expect(form.locator("#error-schedule")).to_be_visible()
    expect(form.locator("#error-name")).to_be_visible()
    # what was typed comes back as the fields' values, literally
    expect(form.locator("#f-name")).to_have_value(SCRIPT)
    expect(form.locator("#f-description")).to_have_value(f"prices {SCRIPT} {IMG}")
    assert form.evaluate(NOTHING_RAN)
    screenshot(form, "task-form-error")
    assert "console-prices" not in [t["name"] for t in scheduler.api.get("/tasks").json()]

    form.fill("#f-name", "console-prices")
    form.fill("#f-schedule", "0 0 1 1 *")
    form.click("#save")
    form.wait_for_url(f"{base}/ui/tasks/console-prices?done=saved")
    expect(form.locator("main")).to_contain_text(f"prices {SCRIPT} {IMG}")
    assert form.evaluate(NOTHING_RAN)
    assert scheduler.api.get("/tasks/console-prices").json()["schedule"]["cron"] == "0 0 1 1 *"

    jobs = operator.new_page()
    jobs.goto(f"{base}/ui/jobs")
    expect(jobs.locator("#live-status")).to_have_text("live")
    _watch(jobs, "#jobs tbody")

    form.click("#trigger")
    expect(form).to_have_url(re.compile(r".*/ui/tasks/console-prices\?done=triggered$"))
    job_id = form.get_attribute("#task-jobs tbody tr[data-job]", "data-job")
    assert job_id

    # the jobs page shows it running; its page, opened then, tails its log while it runs
    _wait_for(jobs, scheduler, "(id) => window.__states.includes(id + ':running')", job_id)
    job = operator.new_page()
    job.goto(f"{base}/ui/jobs/{job_id}")
    _watch(job, "#job")
    # the log tail shows lines while the job runs (no reload: the marker stays)
    _wait_for(
        job,
        scheduler,
        """() => document.getElementById("job-state").textContent === "running"
            && document.getElementById("log").textContent.includes("Progress:")""",
    )
    expect(job.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(job.locator("#log-status")).to_have_text("(complete)", timeout=WAIT_MS)
    log = job.locator("#log").inner_text()
    assert "Spider closed (finished)" in log
    assert f"id='{IMG}'" in log and f"id='{ID_SCRIPT}'" in log  # the items, as text
    assert job.evaluate("window.__marker") == 1
    assert job.evaluate(NOTHING_RAN)
    screenshot(job, "job-live")

    # the jobs page saw every state of the job come in, without a reload
    _wait_for(jobs, scheduler, "(id) => window.__states.includes(id + ':succeeded')", job_id)
    seen = [s.split(":", 1)[1] for s in jobs.evaluate("window.__states") if s.startswith(job_id)]
    assert seen[-2:] == ["running", "succeeded"], seen
    assert jobs.evaluate("window.__marker") == 1
    row = jobs.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row.locator("td.state")).to_have_text("succeeded")
    assert jobs.evaluate(NOTHING_RAN)
    screenshot(jobs, "jobs-live")

    answer = scheduler.api.get(f"/jobs/{job_id}").json()
    assert answer["state"] == "succeeded", answer
    assert answer["stats"]["item_scraped_count"] == len(IDS)
    # the first items are kept as items (a list of objects), not as their repr
    first_items = answer["stats"].get("hydra/first_items")
    assert isinstance(first_items, list) and first_items[0]["id"] == IMG, first_items

    # a fresh job page: the first items as text, the finished log from its file
    job.reload()
    expect(job.locator("#items")).to_contain_text(json.dumps(IMG))  # items shown as JSON
    expect(job.locator("#items")).to_contain_text(json.dumps(ID_SCRIPT))
    expect(job.locator("#log-status")).to_have_text("(complete)", timeout=WAIT_MS)
    assert job.evaluate(NOTHING_RAN)
    screenshot(job, "job-finished")


def _wait_for(page: Page, scheduler: SchedulerProcess, condition: str, arg: Any = None) -> None:
    """``page.wait_for_function``, failing with what the page and the scheduler showed."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)
    except PlaywrightTimeout:
        text = page.inner_text("main")[-3000:]
        raise AssertionError(
            f"{condition} never held on {page.url}:\n{text}\n--- scheduler:\n{scheduler.log()}"
        ) from None


def _watch(page: Page, selector: str) -> None:
    """Mark the page (a reload would lose the mark) and record, in order, each
    ``job:state`` its live parts show."""
    page.evaluate(
        """(selector) => {
            window.__marker = 1;
            window.__states = [];
            const note = () => {
                for (const row of document.querySelectorAll("#jobs tbody tr[data-job]")) {
                    const key = row.dataset.job + ":" + row.cells[3].textContent;
                    if (!window.__states.includes(key)) window.__states.push(key);
                }
                const state = document.getElementById("job-state");
                if (state && !window.__states.includes("job:" + state.textContent)) {
                    window.__states.push("job:" + state.textContent);
                }
            };
            note();
            new MutationObserver(note).observe(
                document.querySelector(selector), {subtree: true, childList: true,
                characterData: true});
        }""",
        selector,
    )


def test_a_read_only_key_can_look_but_not_change(
    reader: BrowserContext, scheduler: SchedulerProcess, sandbox: SandboxServer, tmp_path: Path
) -> None:
    api = scheduler.api
    # long enough to be open when the reader looks: cancelled at the end
    task = _task(sandbox, tmp_path, "read-only", 1000)
    assert api.put("/tasks/read-only", json=task).status_code == 200
    job_id = api.post("/tasks/read-only/trigger").json()["job_id"]
    try:
        page = reader.pages[0]
        base = scheduler.base_url
        expect(page.locator("#role")).to_have_text("reader")
        page.goto(f"{base}/ui/tasks")
        expect(page.locator("#tasks")).to_contain_text("read-only")
        expect(page.locator("#new-task")).to_have_count(0)
        page.goto(f"{base}/ui/tasks/read-only")
        expect(page.locator("#trigger")).to_be_disabled()
        expect(page.locator("#pause")).to_be_disabled()
        expect(page.locator("#edit")).to_have_count(0)
        expect(page.locator("#set-secret")).to_have_count(0)
        page.goto(f"{base}/ui/jobs/{job_id}")
        expect(page.locator("#cancel")).to_be_disabled()
        screenshot(page, "reader-job")

        # the server refuses the same requests forced from the page, token and all
        token = _csrf(page)
        for path in (
            "/ui/tasks/read-only/trigger",
            "/ui/tasks/read-only/pause",
            "/ui/tasks/read-only/secrets",
            f"/ui/jobs/{job_id}/cancel",
            "/ui/tasks/new",
        ):
            assert _post(page, path, token) == 403, path
            assert _post(page, path, token, header=True) == 403, path
        assert [j["job_id"] for j in api.get("/jobs", params={"task": "read-only"}).json()] == [
            job_id
        ]
        assert api.get(f"/jobs/{job_id}").json()["state"] != "cancelled"
        assert api.get("/tasks/read-only").json()["paused"] is False
        assert len(api.get("/tasks/read-only/history").json()) == 1
    finally:
        api.post(f"/jobs/{job_id}/cancel")


def _console_posts() -> list[str]:
    """Every POST route of every console page module (those added later too), as the
    scheduler builds them (an app in process, never started)."""
    import tempfile

    from fastapi.routing import APIRoute
    from scrapy.settings import Settings

    from crawlers.config import HydraConfig
    from crawlers.console.app import page_modules
    from crawlers.db.state import StateDB
    from crawlers.services.scheduler.app import create_app
    from crawlers.services.scheduler.service import Scheduler

    with tempfile.TemporaryDirectory() as tmp:
        config = HydraConfig.from_settings(
            Settings({"HYDRA_DB_URL": f"sqlite:///{tmp}/x.db", "HYDRA_API_KEYS": "k"})
        )
        console = create_app(config, Scheduler(config, StateDB(config.db_url))).state.console
        return sorted(
            "/ui" + route.path
            for module in page_modules()
            for route in module.router(console).routes
            if isinstance(route, APIRoute) and "POST" in (route.methods or ())
        )


def test_every_change_without_the_csrf_token_is_refused(
    operator: BrowserContext, scheduler: SchedulerProcess, sandbox: SandboxServer, tmp_path: Path
) -> None:
    api = scheduler.api
    task = _task(sandbox, tmp_path, "csrf", 1000)
    assert api.put("/tasks/csrf", json=task).status_code == 200
    job_id = api.post("/tasks/csrf/trigger").json()["job_id"]
    try:
        page = operator.pages[0]
        token = _csrf(page)
        routes = _console_posts()
        assert {"/ui/tasks/{name}/trigger", "/ui/jobs/{job_id}/cancel", "/ui/tasks/new"} <= set(
            routes
        )
        for route in routes:
            path = route.replace("{name}", "csrf").replace("{job_id}", job_id)
            path = re.sub(r"\{[^}]+\}", "x", path)
            assert _post(page, path, None) == 403, path
            assert _post(page, path, "not-" + token) == 403, path
            assert _post(page, path, "not-" + token, header=True) == 403, path
        assert [j["job_id"] for j in api.get("/jobs", params={"task": "csrf"}).json()] == [job_id]
        assert api.get(f"/jobs/{job_id}").json()["state"] != "cancelled"
        assert len(api.get("/tasks/csrf/history").json()) == 1

        # a page of another origin (same site: 127.0.0.1, another port, so the cookie
        # goes along) posting with the right token is refused by its Origin
        page.goto(f"{sandbox.base_url}/healthz")
        page.evaluate(
            """async ([url, token]) => {
                const body = new URLSearchParams({csrf_token: token});
                await fetch(url, {method: "POST", body, mode: "no-cors", credentials: "include"});
            }""",
            [f"{scheduler.base_url}/ui/tasks/csrf/pause", token],
        )
        assert api.get("/tasks/csrf").json()["paused"] is False

        # the same request from the console with its token goes through: the refusals
        # above are the token's doing
        page.goto(f"{scheduler.base_url}/ui/tasks/csrf")
        assert _post(page, "/ui/tasks/csrf/pause", token) == 303
        assert api.get("/tasks/csrf").json()["paused"] is True
    finally:
        api.post(f"/jobs/{job_id}/cancel")


def test_a_job_page_opened_before_the_job_starts_tails_its_log(
    operator: BrowserContext, scheduler: SchedulerProcess, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """An operator opens a job still queued (no log yet: it waits for the task's running
    job) and sees its log once it starts, without reloading."""
    api = scheduler.api
    task = {**_task(sandbox, tmp_path, "early", 40), "concurrency": "queue", "max_parallel": 1}
    assert api.put("/tasks/early", json=task).status_code == 200
    long = ",".join(str(n) for n in range(2000))
    first = api.post("/tasks/early/trigger", json={"args": {"ids": long}}).json()["job_id"]
    second = api.post("/tasks/early/trigger").json()["job_id"]
    try:
        page = operator.pages[0]
        _until(lambda: api.get(f"/jobs/{first}").json()["state"] == "running")
        page.goto(f"{scheduler.base_url}/ui/jobs/{second}")
        _watch(page, "#job")
        time.sleep(1.5)  # its live feed is open while it waits
        assert page.inner_text("#job-state") == "queued"
    finally:
        api.post(f"/jobs/{first}/cancel")
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#log")).to_contain_text("Spider closed (finished)", timeout=10_000)
    assert page.evaluate("window.__marker") == 1


def _until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_runs_chart_and_the_region_picture_render(
    browser: Browser, redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    """A run made by a real controller (in process, workers recorded: see
    test_console_runs), then a scheduler subprocess reading the same Redis: the run's
    progress chart and the regions' graph are drawn in Chromium."""
    from tests.integration.test_console_runs import EVIL, REGIONS, _config, _hydra

    config = _config(tmp_path, redis_server.url)
    with ThreadPoolExecutor(1) as thread:  # its own event loop: Playwright's runs here
        run_id = thread.submit(_hydra, config, redis_client).result(timeout=90)
    settings = {
        "HYDRA_REDIS_URL": redis_server.url,
        "HYDRA_REGIONS": json.dumps(REGIONS),
        "HYDRA_MAX_ACTIVE_REGIONS": 3,
        "HYDRA_REGION_COOLDOWN_SECONDS": 600,
    }
    (tmp_path / "scheduler").mkdir()
    with SchedulerProcess(tmp_path / "scheduler", **settings) as scheduler:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(page, scheduler.base_url, READER_KEY)
        page.goto(f"{scheduler.base_url}/ui/runs")
        page.click(f'a[href="/ui/runs/{run_id}"]')
        expect(page.locator("#run-succeeded")).to_have_text("3")
        chart = page.locator("#progress svg")
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100, box
        series = page.locator("#progress svg .series")
        assert {series.nth(n).get_attribute("data-series") for n in range(series.count())} == {
            "succeeded",
            "failed",
            "pending",
        }
        screenshot(page, "run-chart")
        cut = {"chart": _clipped(page, "#progress svg")}

        page.goto(f"{scheduler.base_url}/ui/regions")
        graph = page.locator("#graph svg")
        expect(graph).to_be_visible()
        box = graph.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100, box
        states = {"a": "quarantined", "b": "active", "c": "active", "d": "active"}
        for name, state in states.items():
            expect(graph.locator(f'g[data-region="{name}"]')).to_have_attribute("data-state", state)
        expect(graph.locator("line[data-edge]")).to_have_count(4)
        expect(page.locator('#regions tr[data-region="a"] td.state')).to_have_text("quarantined")
        expect(page.locator("#timeline")).to_contain_text(EVIL)  # as text
        assert page.evaluate(NOTHING_RAN)
        screenshot(page, "regions")
        cut["graph"] = _clipped(page, "#graph svg")
        context.close()
    assert cut == {"chart": [], "graph": []}, "labels cut off by the picture's edge"


def _clipped(page: Page, svg: str) -> list[str]:
    """The texts of an SVG drawn (partly) outside it: labels the picture cuts off."""
    clipped: list[str] = page.evaluate(
        """(selector) => {
            const svg = document.querySelector(selector);
            const box = svg.getBoundingClientRect();
            return [...svg.querySelectorAll("text")].filter((text) => {
                const r = text.getBoundingClientRect();
                return r.left < box.left - 1 || r.right > box.right + 1
                    || r.top < box.top - 1 || r.bottom > box.bottom + 1;
            }).map((text) => text.textContent);
        }""",
        svg,
    )
    return clipped
