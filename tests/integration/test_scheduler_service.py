"""``scrapy scheduler``'s engine and API in process (TestClient), real jobs: an interval
task runs the prices spider against the sandbox; a failing task is retried with back-off
and then alerts through a webhook; keys, read-only keys and write-only secrets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.sandbox import SandboxServer
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.secrets import generate_key
from crawlers.services.scheduler.service import Scheduler
from tests.servers import free_port

pytestmark = pytest.mark.integration
OPERATOR, READER = "op-key-1", "ro-key-1"
SECRET = "s3cr3t-token-9f2"


class Receiver:
    """A webhook receiver on loopback: every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    config = HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": OPERATOR,
                "HYDRA_READONLY_API_KEYS": READER,
                "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
                "HYDRA_SCHEDULER_SECRET_KEY": generate_key(),
            }
        )
    )
    scheduler = Scheduler(config, StateDB(config.db_url))
    with TestClient(create_app(config, scheduler)) as client:
        client.headers["X-API-Key"] = OPERATOR
        yield client


def _wait(check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def _prices(tmp_path: Path, template: str, **settings: Any) -> dict[str, Any]:
    return {
        "spider": "prices",
        "args": {"ids": "1,2", "url_template": template, "token": {"secret": SECRET}},
        "settings": {
            "HYDRA_SINKS": f"jsonl://{tmp_path}/rows.jsonl",
            "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
            **settings,
        },
    }


def test_an_interval_task_runs_and_its_secret_never_comes_back(
    api: TestClient, tmp_path: Path
) -> None:
    with SandboxServer() as sandbox:
        body = {**_prices(tmp_path, sandbox.url_template), "schedule": {"every": "2s"}}
        body["expect"] = {"min_items": 2}
        answer = api.put("/tasks/prices-every", json=body)
        assert answer.status_code == 200, answer.text
        done = _wait(lambda: api.get("/jobs", params={"state": "succeeded"}).json())
    job = api.get(f"/jobs/{done[0]['job_id']}").json()
    assert [h["to"] for h in job["history"]] == ["pending", "queued", "running", "succeeded"]
    assert job["stats"]["item_scraped_count"] == 2
    items = job["stats"]["hydra/first_items"]  # what the console's job page shows
    assert isinstance(items, list) and sorted(i["data"]["id"] for i in items) == ["1", "2"]
    shown = api.get("/tasks/prices-every")
    assert shown.json()["args"]["token"] == {"secret": "***"}
    for path in ("/tasks", "/tasks/prices-every", f"/jobs/{job['job_id']}"):
        assert SECRET not in api.get(path).text
    assert SECRET not in (tmp_path / "state.db").read_bytes().decode("latin-1")
    log = api.get(f"/jobs/{job['job_id']}/log").text
    assert "Spider closed" in log and SECRET not in log


def test_a_failing_task_is_retried_then_alerts(
    api: TestClient, tmp_path: Path, receiver: Receiver
) -> None:
    body = {
        **_prices(tmp_path, "http://127.0.0.1:9/price/{id}", HYDRA_BATCH_MAX_ATTEMPTS=1),
        "schedule": {"trigger": "external"},
        "retry": {"max_retries": 1, "backoff_seconds": 0.5},
        "alerts": [{"webhook": receiver.url, "on": ["failure"]}],
    }
    assert api.put("/tasks/broken", json=body).status_code == 200
    assert api.post("/tasks/broken/trigger").status_code == 202
    _wait(lambda: receiver.bodies)
    jobs = api.get("/jobs", params={"task": "broken"}).json()
    assert sorted((j["attempt"], j["state"]) for j in jobs) == [(0, "failed"), (1, "failed")]
    assert "exit status 1" in jobs[0]["reason"]
    (alert,) = receiver.bodies
    assert (alert["task"], alert["state"], alert["event"]) == ("broken", "failed", "failure")
    assert alert["job_id"] == next(j["job_id"] for j in jobs if j["attempt"] == 1)


def test_keys_read_only_keys_and_bad_input(api: TestClient) -> None:
    body = {"spider": "prices", "schedule": {"trigger": "external"}}
    assert api.put("/tasks/t1", json=body).status_code == 200
    assert api.get("/tasks", headers={"X-API-Key": READER}).status_code == 200
    assert api.put("/tasks/t1", json=body, headers={"X-API-Key": READER}).status_code == 403
    assert api.post("/tasks/t1/trigger", headers={"X-API-Key": READER}).status_code == 403
    assert api.get("/tasks", headers={"X-API-Key": "nope"}).status_code == 401
    del api.headers["X-API-Key"]
    assert api.get("/jobs").status_code == 401
    api.headers["X-API-Key"] = OPERATOR
    bad = api.put("/tasks/t2", json={"spider": "prices", "schedule": {"cron": "61 * * * *"}})
    assert bad.status_code == 422 and "schedule" in bad.text
    assert api.put("/tasks/Bad Name", json=body).status_code == 422
    assert api.get("/tasks/nope").status_code == 404
    assert api.post("/tasks/t1/pause").status_code == 200
    assert api.get("/tasks/t1").json()["paused"] is True
    changes = [c["change"] for c in api.get("/tasks/t1/history").json()]
    assert "created" in changes and len(changes) == 2  # created, then paused
