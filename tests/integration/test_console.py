"""The console through HTTP (TestClient, a real SQLite state database): sign-in and its
cookie, CSRF and read-only keys on every change, the task form's field errors, write-only
secrets, version diffs, escaping, trigger/pause/resume/cancel. The browser drives it in
``test_console_browser.py``; the live feed and log tail are in ``test_console_live.py``."""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from crawlers.config import HydraConfig
from crawlers.console.app import page_modules
from crawlers.console.auth import COOKIE
from crawlers.db.state import StateDB
from crawlers.models.job_status import FIRST_ITEMS_KEY
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.secrets import generate_key
from crawlers.services.scheduler.service import Scheduler
from tests.consolefixtures import console_config, console_sign_in, csrf_token

pytestmark = pytest.mark.integration
OPERATOR, READER = "op-console-key-1", "ro-console-key-1"
SECRET = "s3cr3t-console-77a"
XSS = "<script>alert('x')</script>"
FORM = {
    "name": "demo", "description": "", "spider": "no-such-spider", "schedule_kind": "trigger",
    "schedule": "", "timezone": "UTC", "priority": "50", "max_parallel": "1",
    "concurrency": "skip", "missed": "run_once",
}  # fmt: skip


def _settings(tmp_path: Path, **extra: Any) -> HydraConfig:
    return console_config(
        tmp_path, OPERATOR, READER, HYDRA_SCHEDULER_SECRET_KEY=generate_key(), **extra
    )


@pytest.fixture
def app_parts(tmp_path: Path) -> Iterator[tuple[TestClient, Scheduler]]:
    config = _settings(tmp_path)
    scheduler = Scheduler(config, StateDB(config.db_url))
    with TestClient(create_app(config, scheduler)) as client:
        yield client, scheduler


@pytest.fixture
def console(app_parts: tuple[TestClient, Scheduler]) -> TestClient:
    client = app_parts[0]
    _sign_in(client, OPERATOR)
    return client


_sign_in, _csrf = console_sign_in, csrf_token


def _portal(client: TestClient) -> Any:
    """The TestClient's event loop, where the app's scheduler lives."""
    return client.portal


def _create(client: TestClient, **fields: str) -> Any:
    token = _csrf(client.get("/ui/tasks/new").text)
    return client.post(
        "/ui/tasks/new", data={**FORM, **fields, "csrf_token": token}, follow_redirects=False
    )


def test_pages_need_a_sign_in_and_the_cookie_is_strict_and_keyless(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client = app_parts[0]
    first = client.get("/ui/jobs?state=failed", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=/ui/jobs%3Fstate%3Dfailed"
    wrong = client.post("/ui/login", data={"api_key": OPERATOR + "x"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    assert "not one of this scheduler" in wrong.text
    answer = client.post(
        "/ui/login?next=https://evil.example/", data={"api_key": OPERATOR}, follow_redirects=False
    )
    assert answer.headers["location"] == "/ui/jobs"  # never another site
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    payload = cookie.split("=", 1)[1].split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert OPERATOR.encode() not in decoded and OPERATOR not in cookie
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and 'id="role">operator<' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"  # "no-referrer": Origin: null
    back = client.post("/ui/login?next=/ui/tasks", data={"api_key": READER}, follow_redirects=False)
    assert back.headers["location"] == "/ui/tasks"
    assert 'id="role">reader<' in client.get("/ui/tasks").text


def test_forged_expired_and_revoked_sessions_sign_out(tmp_path: Path) -> None:
    config = _settings(tmp_path, HYDRA_CONSOLE_SESSION_HOURS=1 / 3600)
    scheduler = Scheduler(config, StateDB(config.db_url))
    with TestClient(create_app(config, scheduler)) as client:
        _sign_in(client, OPERATOR)
        good = client.cookies[COOKIE]
        client.cookies.clear()
        client.cookies.set(COOKIE, good[:-2] + ("AA" if not good.endswith("AA") else "BB"))
        assert client.get("/ui/jobs", follow_redirects=False).status_code == 303  # forged
        client.cookies.clear()
        client.cookies.set(COOKIE, good)
        assert client.get("/ui/jobs", follow_redirects=False).status_code == 200
        time.sleep(2.1)
        assert client.get("/ui/jobs", follow_redirects=False).status_code == 303  # expired
    # the same signing key, the operator key removed: its sessions end
    config = _settings(tmp_path, HYDRA_API_KEYS="another-operator-key")
    with TestClient(create_app(config, Scheduler(config, StateDB(config.db_url)))) as client:
        client.cookies.set(COOKIE, good)
        assert client.get("/ui/tasks", follow_redirects=False).status_code == 303


def _post_routes(client: TestClient) -> list[str]:
    """Every state-changing route of every console page module (those added later too)."""
    console = client.app.state.console  # type: ignore[attr-defined]
    return sorted(
        "/ui" + route.path
        for module in page_modules()
        for route in module.router(console).routes
        if isinstance(route, APIRoute) and "POST" in (route.methods or ())
    )


def test_every_change_needs_an_operator_and_the_csrf_token(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client, scheduler = app_parts
    token = _sign_in(client, OPERATOR)
    assert _create(client, name="demo").status_code == 303
    routes = _post_routes(client)
    assert {"/ui/tasks/new", "/ui/tasks/{name}/trigger", "/ui/jobs/{job_id}/cancel"} <= set(routes)
    paths = [re.sub(r"\{[^}]+\}", "demo", path) for path in routes]
    for path in paths:  # no token, a wrong one, or a foreign origin
        assert client.post(path, data={**FORM}).status_code == 403, path
        assert client.post(path, data={"csrf_token": token + "x"}).status_code == 403, path
        foreign = client.post(
            path, data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403, path
    reader_token = _sign_in(client, READER)
    page = client.get("/ui/tasks/demo").text
    assert re.search(r'id="trigger" disabled', page) and re.search(r'id="pause" disabled', page)
    for path in paths:  # the reader's own valid token changes nothing either
        refused = client.post(path, data={**FORM, "csrf_token": reader_token, "name": "other"})
        assert refused.status_code == 403, path
        assert "read-only" in refused.text
    client.cookies.clear()
    for path in paths:
        assert client.post(path, data={"csrf_token": token}).status_code == 401, path
    history = _portal(client).call(scheduler.store.config_history, "demo")
    assert [change.version for change in history] == [1]
    assert _portal(client).call(scheduler.store.jobs) == []
    assert _portal(client).call(scheduler.store.get_config, "other") is None


def test_the_task_form_puts_each_problem_next_to_its_field(console: TestClient) -> None:
    answer = _create(
        console, name="Bad Name", schedule_kind="cron", schedule="* * *", priority="500",
        args="ids: [1, 2", description="kept as typed",
    )  # fmt: skip
    assert answer.status_code == 422
    page = answer.text
    errors = dict(re.findall(r'id="error-([a-z_]+)">([^<]*)<', page))
    assert set(errors) == {"name", "schedule", "priority", "args"}
    assert "5 fields" in errors["schedule"] and "not valid YAML" in errors["args"]
    assert "less than or equal to 100" in errors["priority"]
    assert 'value="kept as typed"' in page and 'value="* * *"' in page  # nothing retyped
    fixed = _create(console, name="prices-daily", schedule_kind="cron", schedule="0 6 * * *",
                    timezone="Europe/Paris", args="ids: '1,2'\npages: '3'")  # fmt: skip
    assert fixed.status_code == 303
    assert fixed.headers["location"] == "/ui/tasks/prices-daily?done=saved"
    shown = console.get(fixed.headers["location"]).text
    assert "cron: 0 6 * * *" in shown and "Europe/Paris" in shown and "ids=1,2" in shown
    again = _create(console, name="prices-daily")
    assert again.status_code == 422 and "exists" in again.text


def test_secrets_are_write_only_and_a_masked_value_keeps_the_stored_one(
    app_parts: tuple[TestClient, Scheduler], tmp_path: Path
) -> None:
    client, scheduler = app_parts
    token = _sign_in(client, OPERATOR)
    created = _create(client, name="sealed", args=f"token: {{secret: {SECRET}}}\nids: '1'")
    assert created.status_code == 303
    pages = ["/ui/tasks/sealed", "/ui/tasks/sealed/edit", "/ui/tasks/sealed/versions/1"]
    pages.append("/ui/tasks")
    for path in pages:
        page = client.get(path).text
        assert SECRET not in page, path
    assert "args.token" in client.get("/ui/tasks/sealed").text
    form = client.get("/ui/tasks/sealed/edit").text
    args = re.search(r'<textarea id="f-args" name="args"[^>]*>([^<]*)</textarea>', form)
    assert args and "***" in args.group(1)
    edited = client.post(
        "/ui/tasks/sealed/edit",
        data={**FORM, "args": args.group(1).replace("&#39;", "'"), "priority": "60",
              "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert edited.status_code == 303, edited.text

    def stored_args() -> dict[str, Any]:
        task = _portal(client).call(scheduler.task, "sealed")
        return task.storage_dump()["args"]  # type: ignore[no-any-return]

    assert stored_args()["token"] == {"secret": SECRET}  # the mask kept the secret
    renamed = client.post(
        "/ui/tasks/sealed/edit",
        data={**FORM, "args": "other_name: {secret: '***'}", "csrf_token": token},
    )  # a mask under another name would become the secret "***": refused
    assert renamed.status_code == 422 and "secrets panel" in renamed.text
    assert stored_args()["token"] == {"secret": SECRET}
    set_one = client.post(
        "/ui/tasks/sealed/secrets",
        data={"section": "settings", "key": "HYDRA_API_TOKEN", "value": SECRET + "2",
              "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert set_one.status_code == 303
    assert "settings.HYDRA_API_TOKEN" in client.get("/ui/tasks/sealed").text
    unset = client.post(
        "/ui/tasks/sealed/secrets",
        data={"section": "args", "key": "token", "unset": "yes", "csrf_token": token},
        follow_redirects=False,
    )
    assert unset.status_code == 303 and "token" not in stored_args()
    for path in pages:
        assert SECRET not in client.get(path).text, path
    assert SECRET not in (tmp_path / "state.db").read_bytes().decode("latin-1")


def test_a_version_page_shows_what_changed(console: TestClient) -> None:
    assert _create(console, name="versions", priority="50").status_code == 303
    token = _csrf(console.get("/ui/tasks/versions/edit").text)
    console.post("/ui/tasks/versions/edit", data={**FORM, "priority": "70", "csrf_token": token})
    page = console.get("/ui/tasks/versions/versions/2").text
    assert '<span class="d-del">-  &#34;priority&#34;: 50,</span>' in page
    assert '<span class="d-add">+  &#34;priority&#34;: 70,</span>' in page
    assert "compared with version 1" in page
    assert console.get("/ui/tasks/versions/versions/9").status_code == 404


def test_html_in_names_reasons_and_items_is_text(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client, scheduler = app_parts
    _sign_in(client, OPERATOR)
    assert _create(client, name="escaped", description=XSS).status_code == 303
    store = scheduler.store
    now = datetime.now(UTC)
    portal = _portal(client)
    portal.call(store.create_job, "job-x1", "escaped", 0, 50, now, now)
    portal.call(lambda: store.transition("job-x1", "queued", XSS))
    stats = {"item_scraped_count": 1, FIRST_ITEMS_KEY: [{"name": XSS, "url": "https://a/"}]}
    portal.call(lambda: store.annotate("job-x1", stats_json=stats))
    for path in ("/ui/tasks/escaped", "/ui/jobs", "/ui/jobs/job-x1", "/ui/tasks"):
        page = client.get(path).text
        assert "<script>alert" not in page, path
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in client.get("/ui/tasks/escaped").text
    job = client.get("/ui/jobs/job-x1").text
    assert "&lt;script&gt;" in job and "item_scraped_count" in job
    assert "hydra/first_items" not in job  # shown as items, not among the stats
    missing = client.get("/ui/jobs/<script>x</script>")
    assert missing.status_code == 404 and "<script>x" not in missing.text


def test_trigger_pause_resume_and_cancel(app_parts: tuple[TestClient, Scheduler]) -> None:
    client, scheduler = app_parts
    token = _sign_in(client, OPERATOR)
    portal = _portal(client)
    assert _create(client, name="buttons").status_code == 303
    paused = client.post("/ui/tasks/buttons/pause", data={"csrf_token": token})
    assert paused.status_code == 200 and 'id="task-state">paused<' in paused.text
    assert portal.call(scheduler.store.get_config, "buttons").paused is True
    resumed = client.post("/ui/tasks/buttons/resume", data={"csrf_token": token})
    assert 'id="task-state">active<' in resumed.text
    assert portal.call(scheduler.store.get_config, "buttons").paused is False
    triggered = client.post("/ui/tasks/buttons/trigger", data={"csrf_token": token})
    assert "Triggered" in triggered.text
    jobs = portal.call(scheduler.store.jobs, "buttons")
    assert len(jobs) == 1
    now = datetime.now(UTC)
    portal.call(scheduler.store.create_job, "job-to-cancel", "buttons", 0, 50, now, now)
    page = client.get("/ui/jobs/job-to-cancel").text
    assert 'id="cancel"' in page
    done = client.post("/ui/jobs/job-to-cancel/cancel", data={"csrf_token": token})
    assert "The job was cancelled." in done.text and 'id="cancel"' not in done.text
    assert portal.call(scheduler.store.job, "job-to-cancel").state == "cancelled"
    again = client.post("/ui/jobs/job-to-cancel/cancel", data={"csrf_token": token})
    assert "already ended" in again.text


def test_the_job_list_filters_and_pages(app_parts: tuple[TestClient, Scheduler]) -> None:
    client, scheduler = app_parts
    _sign_in(client, OPERATOR)
    portal = _portal(client)
    store = scheduler.store
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    for index in range(60):
        fired = early if index < 30 else late
        portal.call(store.create_job, f"job-{index:03}", "a" if index % 2 else "b", 0, 50,
                    fired, fired)  # fmt: skip
    portal.call(lambda: store.transition("job-059", "queued"))
    first = client.get("/ui/jobs").text
    rows = re.findall(r'<tr data-job="([^"]+)">', first)
    assert len(rows) == 50 and rows[0] == "job-059"
    older = re.search(r'id="older" href="\?([^"]+)"', first)
    assert older
    second = client.get("/ui/jobs?" + older.group(1).replace("&amp;", "&")).text
    assert re.findall(r'<tr data-job="([^"]+)">', second)[-1] == "job-000"
    assert 'data-live="no"' in second and 'data-live="yes"' in first
    by_state = re.findall(r'<tr data-job="([^"]+)">', client.get("/ui/jobs?state=queued").text)
    assert by_state == ["job-059"]
    by_task = re.findall(r'<tr data-job="([^"]+)">', client.get("/ui/jobs?task=a").text)
    assert len(by_task) == 30 and all(int(job[-3:]) % 2 for job in by_task)
    window = client.get("/ui/jobs?since=2025-12-31T00:00&until=2026-02-01T00:00").text
    assert len(re.findall(r'<tr data-job="', window)) == 30
    assert 'value="2025-12-31T00:00"' in window


def test_an_unchanged_save_keeps_every_kind_of_secret_and_alerts_keep_their_own(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client, scheduler = app_parts
    token = _sign_in(client, OPERATOR)
    args = "api_token: plain-tok-1\nproxy: 'http://u:p4ss@h:8080/'\nids: '1'"
    alerts = (
        "- {webhook: {secret: 'https://hooks.example/AAA'}, on: [failure]}\n"
        "- {webhook: {secret: 'https://hooks.example/BBB'}, on: [timeout]}"
    )
    assert _create(client, name="kinds", args=args, alerts=alerts).status_code == 303
    portal = _portal(client)

    def stored() -> dict[str, Any]:
        return portal.call(scheduler.task, "kinds").storage_dump()  # type: ignore[no-any-return]

    before = stored()
    form = client.get("/ui/tasks/kinds/edit").text
    shown = {
        name: re.search(rf'<textarea id="f-{name}" name="{name}"[^>]*>([^<]*)</textarea>', form)
        for name in ("args", "alerts")
    }
    sent = {name: html.unescape(match.group(1)) for name, match in shown.items() if match}
    assert "plain-tok-1" not in sent["args"] and "p4ss" not in sent["args"]
    saved = client.post(
        "/ui/tasks/kinds/edit", data={**FORM, **sent, "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert saved.status_code == 303, saved.text
    assert stored()["args"] == before["args"] and stored()["alerts"] == before["alerts"]
    # the first alert removed: the second keeps its own hook, or the save is refused
    second_only = "\n".join(sent["alerts"].split("\n- ")[1:])
    second_only = second_only if second_only.startswith("-") else "- " + second_only
    answer = client.post(
        "/ui/tasks/kinds/edit",
        data={**FORM, **sent, "alerts": second_only, "csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 422 and "needs its webhook again" in answer.text
    assert stored()["alerts"] == before["alerts"]  # A's hook never moved to B


def test_the_forms_paused_box_pauses_and_resumes(app_parts: tuple[TestClient, Scheduler]) -> None:
    client, scheduler = app_parts
    token = _sign_in(client, OPERATOR)
    assert _create(client, name="boxed", paused="on").status_code == 303
    portal = _portal(client)
    assert portal.call(scheduler.store.get_config, "boxed").paused is True
    assert 'id="task-state">paused<' in client.get("/ui/tasks/boxed").text
    client.post("/ui/tasks/boxed/edit", data={**FORM, "csrf_token": token})  # box unticked
    assert portal.call(scheduler.store.get_config, "boxed").paused is False


def test_sign_in_is_limited_and_returns_only_to_console_paths(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client = app_parts[0]
    for target, expected in (
        ("/ui/../..//evil.example", "/ui/jobs"),
        ("/ui//evil.example", "/ui/evil.example"),
        ("/ui/tasks?state=x", "/ui/tasks?state=x"),
        ("/ui\\\\evil", "/ui/jobs"),
    ):
        answer = client.post(
            "/ui/login", params={"next": target}, data={"api_key": READER},
            follow_redirects=False,
        )  # fmt: skip
        assert answer.headers["location"] == expected, target
    big = client.post("/ui/login", data={"api_key": "x" * 20_000})
    assert big.status_code == 413
    token = _sign_in(client, OPERATOR)
    assert _create(client, name="demo").status_code == 303
    echoed = client.post(
        "/ui/tasks/demo/secrets",
        data={"section": "args", "key": "k", "value": "v" * 5000, "csrf_token": token},
    )  # too long: refused as a page that names the field and never repeats the value
    assert echoed.status_code == 422 and "text/html" in echoed.headers["content-type"]
    assert "value:" in echoed.text and "v" * 100 not in echoed.text
    for _ in range(10):
        assert client.post("/ui/login", data={"api_key": "wrong"}).status_code == 401
    limited = client.post("/ui/login", data={"api_key": OPERATOR}, follow_redirects=False)
    assert limited.status_code == 429  # even the right key, for a minute


def test_behind_a_tls_proxy_the_cookie_is_secure_and_forms_work(
    app_parts: tuple[TestClient, Scheduler],
) -> None:
    client = app_parts[0]
    answer = client.post(
        "/ui/login", data={"api_key": OPERATOR}, headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )  # fmt: skip
    assert "Secure" in answer.headers["set-cookie"]
    value = answer.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    client.cookies.clear()
    client.cookies.set(COOKIE, value)  # the test client talks http: it would not send it
    token = _csrf(client.get("/ui/tasks").text)
    proxied = client.post(
        "/ui/tasks/new", data={**FORM, "name": "via-proxy", "csrf_token": token},
        headers={"Origin": "https://testserver"}, follow_redirects=False,
    )  # fmt: skip
    assert proxied.status_code == 303  # the browser's https origin, the app's http
