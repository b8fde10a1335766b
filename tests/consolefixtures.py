"""The operator console in a real browser: ``scrapy scheduler`` as a subprocess and
Debian's Chromium driven by Playwright (never ``playwright install``: see
crawlers/fetchers/capture.py and STACK-NOTES "Headless browser")."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import httpx
from fastapi.testclient import TestClient
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.fetchers.capture import CHROMIUM_ARGS, CHROMIUM_PATH
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.secrets import generate_key
from crawlers.services.scheduler.service import Scheduler
from tests.conftest import ROOT, worker_env
from tests.servers import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

OPERATOR_KEY = "console-operator-key-7d1"
READER_KEY = "console-reader-key-2b9"
#: read at import, before the autouse fixture hides every HYDRA_* variable
ARTIFACTS = Path(os.environ.get("HYDRA_TEST_ARTIFACTS") or ROOT / "test-artifacts" / "console")
PNG = b"\x89PNG\r\n\x1a\n"


class SchedulerProcess:
    """``scrapy scheduler --bind 127.0.0.1:<free port>`` as an operator starts it: its own
    SQLite database, jobs folder, topics and keys; the caller's HYDRA_* never leak in."""

    def __init__(self, workdir: Path, **settings: object) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "scheduler.log"
        self.env = worker_env(
            HYDRA_API_KEYS=OPERATOR_KEY,
            HYDRA_READONLY_API_KEYS=READER_KEY,
            HYDRA_DB_URL=f"sqlite:///{workdir}/state.db",
            HYDRA_SCHEDULER_JOBS_DIR=str(workdir / "jobs"),
            HYDRA_TOPICS_PATH=str(workdir / "topics"),
            HYDRA_SCHEDULER_SECRET_KEY=generate_key(),
            HYDRA_CONSOLE_SECRET=generate_key(),
            **settings,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(
            base_url=self.base_url, headers={"X-API-Key": OPERATOR_KEY}, timeout=30
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> Self:
        command = [sys.executable, "-m", "scrapy", "scheduler", "--bind", f"127.0.0.1:{self.port}"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.api.get("/ui/login").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the scheduler did not start:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM (it stops its jobs and closes its database), then SIGKILL."""
        self.api.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS)
    )


def sign_in(page: Page, base_url: str, key: str) -> None:
    """The sign-in form as a person fills it; lands on the jobs page."""
    page.goto(f"{base_url}/ui/login")
    page.fill("#api_key", key)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{base_url}/ui/jobs")


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG kept as a test artefact; checked to be a non-empty PNG."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000, path
    return path


# -- the scheduler's app in process (TestClient), for the console's HTTP-level tests ----


def console_config(tmp_path: Path, operator: str, reader: str = "", **extra: object) -> HydraConfig:
    """The settings of a scheduler whose state, jobs and topics live in ``tmp_path``."""
    return HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": operator,
                "HYDRA_READONLY_API_KEYS": reader,
                "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
                "HYDRA_CONSOLE_SECRET": "console-signing-key",
                **extra,
            }
        )
    )


def console_client(config: HydraConfig) -> TestClient:
    """The scheduler's app (the console included) for ``config``, not started yet."""
    return TestClient(create_app(config, Scheduler(config, StateDB(config.db_url))))


def csrf_token(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def console_sign_in(client: TestClient, key: str) -> str:
    """Sign in through the form; the session's CSRF token."""
    answer = client.post("/ui/login", data={"api_key": key}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return csrf_token(client.get("/ui/jobs").text)
