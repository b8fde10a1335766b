"""The scheduler's alerts over real channels: a local SMTP server (aiosmtpd, with AUTH)
and a webhook receiver on loopback, fed by real ``scrapy crawl`` jobs.

Each test starts the scheduler's API in process (TestClient) against an SQLite state
database, with a fake clock: back-offs and timeouts pass when the test says so, not by
sleeping. Jobs are the ``prices`` spider: with ``-a ids`` on a closed port it fails
(exit status 1), without IDs it succeeds with 0 items, against the sandbox it scrapes.

Negative checks ("no alert") wait for a barrier first: a job that cannot start (its
``{"env": ...}`` argument is unset) ends in the tick after it is triggered, so once it
has, every alert of the jobs that had ended before it was triggered has been sent.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from fastapi.testclient import TestClient
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.sandbox import SandboxServer
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.secrets import generate_key
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.triggers import FakeClock
from tests.servers import free_port

pytestmark = pytest.mark.integration
T = TypeVar("T")

OPERATOR = "op-key-alerts"
SMTP_USER = "hydra-alerts"
SMTP_PASSWORD = "smtp-pw-Zq81xv"
HOOK_TOKEN = "hook-token-4Rt9wq"
ALERT_FROM = "scheduler@hydra.example"
ONCALL = "oncall@example.com"
#: nothing listens on the discard port: a job asking it for prices fails (exit status 1)
CLOSED_TEMPLATE = "http://127.0.0.1:9/price/{id}"


# --- the channels ---------------------------------------------------------------------


@dataclass
class Hook:
    path: str
    body: dict[str, Any]


class Receiver:
    """A webhook receiver on loopback: every POST (path and JSON body); paths under
    ``/fail`` answer 500, the others 204."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        received = self.hooks

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(Hook(self.path, json.loads(self.rfile.read(length))))
                self.send_response(500 if self.path.startswith("/fail") else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def at(self, path: str) -> list[Hook]:
        return [hook for hook in self.hooks if hook.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    authenticated: bool


@dataclass
class Mailbox:
    """aiosmtpd on loopback with AUTH (LOGIN/PLAIN; TLS is not required on loopback): it
    accepts one user and password and keeps every message, noting whether its session
    had logged in."""

    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # auth_required stays False: with auth_require_tls=False aiosmtpd would warn that
        # AUTH in clear is insecure; each message records whether its session logged in
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )

    @property
    def url(self) -> str:
        return f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{self.port}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        login = data.login.decode() if isinstance(data, LoginPassword) else repr(data)
        self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        sender = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        self.mails.append(Mail(sender, recipients, message, bool(session.authenticated)))
        return "250 Message accepted for delivery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


# --- the scheduler --------------------------------------------------------------------


@dataclass
class Hydra:
    client: TestClient
    clock: FakeClock
    tmp_path: Path

    def put(self, name: str, body: dict[str, Any]) -> None:
        answer = self.client.put(f"/tasks/{name}", json=body)
        assert answer.status_code == 200, answer.text

    def trigger(self, name: str, args: dict[str, str] | None = None) -> str:
        answer = self.client.post(f"/tasks/{name}/trigger", json={"args": args or {}})
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["job_id"]
        return job_id

    def jobs(self, task: str) -> list[dict[str, Any]]:
        answer = self.client.get("/jobs", params={"task": task})
        assert answer.status_code == 200, answer.text
        jobs: list[dict[str, Any]] = answer.json()
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def ended(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        """The job once it is in a final state."""
        final = ("succeeded", "failed", "timed_out", "cancelled")

        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in final else None

        job = _wait(check, timeout)
        assert job is not None
        return job

    def barrier(self) -> None:
        """Returns after a full tick has run since the call (see the module docstring)."""
        self.put(
            "barrier",
            {
                "spider": "prices",
                "args": {"token": {"env": "BARRIER_SECRET_UNSET"}},
                "schedule": {"trigger": "external"},
            },
        )
        job = self.ended(self.trigger("barrier"), timeout=10)
        assert job["state"] == "failed" and "not started" in job["reason"], job

    def task_body(
        self, name: str, template: str = CLOSED_TEMPLATE, **fields: Any
    ) -> dict[str, Any]:
        """A ``prices`` task (external trigger) writing files of its own under tmp_path
        (a sink file has one writer); ``ids`` come from the trigger's args."""
        return {
            "spider": "prices",
            "args": {"url_template": template},
            "settings": {
                "HYDRA_SINKS": f"jsonl://{self.tmp_path}/{name}-rows.jsonl",
                "HYDRA_DEADLETTER_PATH": str(self.tmp_path / f"{name}-deadletter.jsonl"),
                "HYDRA_BATCH_MAX_ATTEMPTS": 1,
            },
            "schedule": {"trigger": "external"},
            **fields,
        }


HydraFactory = Callable[..., Hydra]


@pytest.fixture
def hydra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HydraFactory]:
    """Starts the scheduler's API (``smtp_url``, ``environ`` extra variables for jobs and
    env references); stopped at teardown."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):  # loopback hooks and sandbox, never a proxy
            monkeypatch.delenv(name)
    stack = ExitStack()

    def start(smtp_url: str = "", environ: dict[str, str] | None = None) -> Hydra:
        config = HydraConfig.from_settings(
            Settings(
                {
                    "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                    "HYDRA_API_KEYS": OPERATOR,
                    "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                    "HYDRA_SCHEDULER_SECRET_KEY": generate_key(),
                    "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
                    "HYDRA_SMTP_URL": smtp_url,
                    "HYDRA_ALERT_FROM": ALERT_FROM,
                }
            )
        )
        clock = FakeClock(datetime.now(UTC))
        scheduler = Scheduler(
            config, StateDB(config.db_url), clock=clock, environ={**os.environ, **(environ or {})}
        )
        client = stack.enter_context(TestClient(create_app(config, scheduler)))
        client.headers["X-API-Key"] = OPERATOR
        return Hydra(client, clock, tmp_path)

    with stack:
        yield start


def _wait(check: Callable[[], T], timeout: float = 30) -> T:
    """``check()`` once it is truthy (polled every 0.1 s); fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def _api_texts(hydra: Hydra, task: str) -> list[str]:
    """Every answer of the API about the task and its jobs."""
    client = hydra.client
    paths = ["/tasks", f"/tasks/{task}", f"/tasks/{task}/history", "/jobs"]
    for job in hydra.jobs(task):
        paths += [f"/jobs/{job['job_id']}", f"/jobs/{job['job_id']}/log"]
    answers = [client.get(path) for path in paths]
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    return [answer.text for answer in answers]


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of the test (setup and call), message and traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = caplog.get_records("setup") + caplog.get_records("call")
    return "\n".join(formatter.format(record) for record in records)


# --- the tests ------------------------------------------------------------------------


def test_a_failing_job_is_retried_after_its_back_off_then_alerts_by_webhook_and_mail(
    hydra: HydraFactory,
    receiver: Receiver,
    mailbox: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO, as `scrapy scheduler` logs (LOG_LEVEL): libraries' request lines included
    caplog.set_level(logging.INFO)
    app = hydra(smtp_url=mailbox.url)
    hook_url = f"{receiver.url}/hook/{HOOK_TOKEN}"  # a chat hook: its token in the path
    body = app.task_body(
        "broken",
        retry={"max_retries": 1, "backoff_seconds": 30, "jitter": 0},
        alerts=[
            {"webhook": {"secret": hook_url}, "on": ["failure"]},
            {"email": ONCALL, "on": ["failure"]},
        ],
    )
    app.put("broken", body)
    first = app.ended(app.trigger("broken", {"ids": "1"}))
    assert first["state"] == "failed" and "exit status 1" in first["reason"], first

    # the retry waits for its back-off (30 s on the fake clock), and the first failure
    # alerts nobody: it is retried
    (retry,) = [job for job in app.jobs("broken") if job["attempt"] == 1]
    assert retry["state"] == "pending"
    finished = datetime.fromisoformat(first["finished_at"])
    assert datetime.fromisoformat(retry["scheduled_for"]) == finished + timedelta(seconds=30)
    app.clock.advance(29)
    app.barrier()
    assert app.job(retry["job_id"])["state"] == "pending"
    assert receiver.hooks == [] and mailbox.mails == []

    app.clock.advance(1)
    second = app.ended(retry["job_id"])
    assert second["state"] == "failed" and "exit status 1" in second["reason"], second
    assert [h["to"] for h in second["history"]] == [
        "pending", "queued", "running", "failed"
    ]  # fmt: skip
    _wait(lambda: mailbox.mails)  # the e-mail rule comes last: the webhook was sent before
    assert sorted((j["attempt"], j["state"]) for j in app.jobs("broken")) == [
        (0, "failed"),
        (1, "failed"),
    ]

    # one webhook POST, to the secret URL, about the last attempt
    (hook,) = receiver.hooks
    assert hook.path == f"/hook/{HOOK_TOKEN}"
    alert = hook.body
    assert (alert["task"], alert["job_id"], alert["state"], alert["event"]) == (
        "broken",
        retry["job_id"],
        "failed",
        "failure",
    )
    assert alert["reason"] == second["reason"]

    # one e-mail, through an authenticated session, from HYDRA_ALERT_FROM to the rule's address
    (mail,) = mailbox.mails
    assert mail.authenticated and mailbox.logins == [(SMTP_USER, True)]
    assert (mail.sender, mail.recipients) == (ALERT_FROM, [ONCALL])
    message = mail.message
    assert (message["From"], message["To"]) == (ALERT_FROM, ONCALL)
    assert "broken" in message["Subject"] and "failure" in message["Subject"]
    text = message.get_content()
    assert f"job_id: {retry['job_id']}" in text
    assert "state: failed" in text and f"reason: {second['reason']}" in text

    # the secrets: nowhere in the mail, the API's answers or the log
    assert SMTP_PASSWORD not in message.as_string() and HOOK_TOKEN not in message.as_string()
    for shown in _api_texts(app, "broken"):
        assert HOOK_TOKEN not in shown and SMTP_PASSWORD not in shown
    assert app.client.get("/tasks/broken").json()["alerts"][0]["webhook"] == {"secret": "***"}
    assert any(r.name.startswith("crawlers.services.scheduler") for r in caplog.records)
    logged = _logged(caplog)
    assert HOOK_TOKEN not in logged and SMTP_PASSWORD not in logged


def test_consecutive_failures_alert_at_the_threshold_and_a_success_resets_the_count(
    hydra: HydraFactory, receiver: Receiver
) -> None:
    app = hydra()
    body = app.task_body(
        "flaky",
        alerts=[
            {"webhook": f"{receiver.url}/twice", "on": ["consecutive_failures"], "consecutive": 2}
        ],
    )
    app.put("flaky", body)

    # fail, succeed (no IDs: nothing to fetch), fail: never two failures in a row
    runs = [("1", "failed"), ("", "succeeded"), ("1", "failed")]
    for ids, state in runs:
        job = app.ended(app.trigger("flaky", {"ids": ids} if ids else None))
        assert job["state"] == state, job
    app.barrier()
    assert receiver.hooks == []

    # a second failure in a row alerts, with the count
    last = app.ended(app.trigger("flaky", {"ids": "1"}))
    assert last["state"] == "failed"
    (hook,) = _wait(lambda: receiver.hooks)
    assert hook.path == "/twice"
    assert (hook.body["job_id"], hook.body["event"]) == (last["job_id"], "consecutive_failures")
    assert (hook.body["state"], hook.body["consecutive_failures"]) == ("failed", 2)


def test_a_job_that_succeeds_with_zero_items_alerts_one_with_items_does_not(
    hydra: HydraFactory, receiver: Receiver, tmp_path: Path
) -> None:
    app = hydra()
    with SandboxServer() as sandbox:
        for name, template in (("empty", CLOSED_TEMPLATE), ("stocked", sandbox.url_template)):
            rule = {"webhook": f"{receiver.url}/{name}", "on": ["zero_items"]}
            app.put(name, app.task_body(name, template, alerts=[rule]))
        # both at once: different tasks run in parallel
        empty_id, stocked_id = app.trigger("empty"), app.trigger("stocked", {"ids": "1,2"})
        empty, stocked = app.ended(empty_id), app.ended(stocked_id)
    assert (empty["state"], stocked["state"]) == ("succeeded", "succeeded")
    assert stocked["stats"]["item_scraped_count"] == 2
    assert "item_scraped_count" not in empty["stats"] or empty["stats"]["item_scraped_count"] == 0
    (hook,) = _wait(lambda: receiver.at("/empty"))
    assert (hook.body["job_id"], hook.body["event"]) == (empty_id, "zero_items")
    assert (hook.body["state"], hook.body["items"]) == ("succeeded", 0)
    app.barrier()
    assert receiver.at("/stocked") == [] and len(receiver.hooks) == 1


def test_a_job_past_its_timeout_is_stopped_timed_out_and_alerts(
    hydra: HydraFactory, receiver: Receiver
) -> None:
    app = hydra()
    # 0.3 s a price and 2000 IDs: minutes of work, unless stopped
    with SandboxServer(delay_seconds=0.3) as sandbox:
        body = app.task_body(
            "slow",
            sandbox.url_template,
            timeout_seconds=60,
            alerts=[{"webhook": f"{receiver.url}/late", "on": ["timeout"]}],
        )
        app.put("slow", body)
        job_id = app.trigger("slow", {"ids": ",".join(str(n) for n in range(1, 2001))})
        _wait(lambda: sandbox.stats()["requests"] > 0)  # it is fetching
        assert app.job(job_id)["state"] == "running"
        app.clock.advance(61)
        job = app.ended(job_id)
        fetched = sandbox.stats()["requests"]
    assert job["state"] == "timed_out", job
    assert job["reason"] == "ran longer than its timeout (60 s)"
    assert fetched < 2000  # stopped, not finished
    (hook,) = _wait(lambda: receiver.hooks)
    assert hook.path == "/late"
    assert (hook.body["job_id"], hook.body["state"], hook.body["event"]) == (
        job_id,
        "timed_out",
        "timeout",
    )


def test_channels_that_fail_are_logged_without_secrets_and_do_not_stop_the_scheduler(
    hydra: HydraFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    down = free_port()  # no SMTP server there
    app = hydra(
        smtp_url=f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{down}",
        # an env reference whose variable holds no valid URL (an operator's typo)
        environ={"BROKEN_ALERT_HOOK": f"http://[::1/{HOOK_TOKEN}"},
    )
    body = app.task_body(
        "doomed",
        alerts=[
            {"webhook": {"env": "BROKEN_ALERT_HOOK"}},
            {"webhook": {"secret": f"{receiver.url}/fail/{HOOK_TOKEN}"}},
            {"email": ONCALL},
            {"webhook": f"{receiver.url}/ok"},  # still sent after the three that fail
        ],
    )
    app.put("doomed", body)
    job = app.ended(app.trigger("doomed", {"ids": "1"}))
    assert job["state"] == "failed" and "exit status 1" in job["reason"], job
    _wait(lambda: receiver.at("/ok"))
    assert [hook.path for hook in receiver.hooks] == [f"/fail/{HOOK_TOKEN}", "/ok"]
    assert receiver.hooks[1].body["job_id"] == job["job_id"]

    # the scheduler goes on: the next job runs and ends
    app.barrier()
    assert app.job(job["job_id"])["state"] == "failed"

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    webhook_failures = [m for m in warnings if m.startswith("Alert webhook")]
    assert len(webhook_failures) == 2, warnings  # the invalid URL and the 500
    # the hook's origin (which server refused), never its path
    assert f"Alert webhook to {receiver.url} failed: HTTP status 500" in webhook_failures
    assert any(f"E-mail alert to {ONCALL} failed" in message for message in warnings), warnings
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.name.startswith("crawlers.services.scheduler")], errors
    logged = _logged(caplog)
    assert HOOK_TOKEN not in logged and SMTP_PASSWORD not in logged
    for shown in _api_texts(app, "doomed"):
        assert HOOK_TOKEN not in shown and SMTP_PASSWORD not in shown
