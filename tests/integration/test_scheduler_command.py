"""``scrapy scheduler`` as a user starts it: the API on its bind address, and with
``HYDRA_LOG_JSON`` one JSON object per log line, a job's lines carrying its ID and task,
credentials masked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, worker_env
from tests.servers import free_port

SMTP_PASSWORD = "smtp-pw-51c9"


def test_json_logs_name_the_job_and_mask_credentials(tmp_path: Path) -> None:
    port = free_port()
    env = worker_env(
        HYDRA_API_KEYS="op",
        HYDRA_DB_URL=f"sqlite:///{tmp_path}/state.db",
        HYDRA_TOPICS_PATH=str(tmp_path / "topics"),
        HYDRA_SCHEDULER_JOBS_DIR=str(tmp_path / "jobs"),
        HYDRA_LOG_JSON="true",
        HYDRA_SMTP_URL=f"smtp://alerts:{SMTP_PASSWORD}@127.0.0.1:{free_port()}",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "scheduler", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "op"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                api.get("/tasks").raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        task = {
            "spider": "prices",
            # an unset environment reference: the job fails before any crawl starts
            "args": {"token": {"env": "HYDRA_TEST_UNSET_TOKEN"}},
            "schedule": {"trigger": "external"},
            "alerts": [{"email": "ops@example.com", "on": ["failure"]}],
        }
        assert api.put("/tasks/no-token", json=task).status_code == 200
        job_id = api.post("/tasks/no-token/trigger").json()["job_id"]
        while api.get(f"/jobs/{job_id}").json()["state"] != "failed":
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        time.sleep(1)  # the alert attempt (SMTP is down) is logged
    finally:
        api.close()
        process.terminate()
        output, _ = process.communicate(timeout=30)
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    ended = [r for r in records if r.get("job_id") == job_id and r.get("state") == "failed"]
    assert len(ended) == 1 and ended[0]["task"] == "no-token" and ended[0]["level"] == "WARNING"
    assert "HYDRA_TEST_UNSET_TOKEN" in ended[0]["message"]
    assert any("alert" in r["message"].lower() for r in records)  # the failed e-mail, logged
    assert SMTP_PASSWORD not in output
