"""``make demo``, seed 001: ``scrapy scheduler`` running a task every few seconds, and a
failing task retried with back-off, then alerting through a webhook (a local receiver)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from crawlers.sandbox import SandboxServer
from crawlers.sandbox.server import _free_port

ROOT = Path(__file__).resolve().parent.parent


def _receiver(alerts: list[dict[str, Any]]) -> ThreadingHTTPServer:
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            alerts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0")))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", _free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_scheduler_demo(output: Path) -> int:
    output = output / "scheduler"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    alerts: list[dict[str, Any]] = []
    hook = _receiver(alerts)
    key, port = secrets.token_urlsafe(12), _free_port()
    api = f"http://127.0.0.1:{port}"
    print(
        "\n==== Seed 001: the scheduler (a task every 3 s, a failing task retried, an alert) ===="
    )
    with SandboxServer() as sandbox:
        rows = output / "rows.jsonl"
        tasks = {
            "tasks": [
                {
                    "name": "prices-every-3s",
                    "spider": "prices",
                    "args": {"ids": "1,2,3", "url_template": sandbox.url_template},
                    "settings": {
                        "HYDRA_SINKS": f"jsonl://{rows}",
                        "HYDRA_DEADLETTER_PATH": str(output / "dl.jsonl"),
                    },
                    "schedule": {"every": "3s"},
                    "expect": {"min_items": 3},
                },
                {
                    "name": "prices-broken",
                    "spider": "prices",
                    "args": {"ids": "1", "url_template": "http://127.0.0.1:9/price/{id}"},
                    "settings": {
                        "HYDRA_BATCH_MAX_ATTEMPTS": 1,
                        "HYDRA_DEADLETTER_PATH": str(output / "dl.jsonl"),
                    },
                    "schedule": {"trigger": "external"},
                    "retry": {"max_retries": 1, "backoff_seconds": 1},
                    "alerts": [
                        {"webhook": f"http://127.0.0.1:{hook.server_port}/alert", "on": ["failure"]}
                    ],
                },
            ]
        }
        (output / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
        env.update(
            HYDRA_API_KEYS=key,
            HYDRA_SCHEDULER_BIND=f"127.0.0.1:{port}",
            HYDRA_DB_URL=f"sqlite:///{output.resolve()}/scheduler.db",
            HYDRA_TASKS_FILE=str((output / "tasks.json").resolve()),
            HYDRA_SCHEDULER_JOBS_DIR=str((output / "jobs").resolve()),
            HYDRA_TOPICS_PATH=str((output / "topics").resolve()),  # the jobs' status reports
        )
        log = (output / "scheduler.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "scrapy", "scheduler"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        headers = {"X-API-Key": key}
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{api}/tasks", headers=headers, timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        print(f"The scheduler did not start; see {output / 'scheduler.log'}")
                        return 1
                    time.sleep(0.2)
            print(f"scrapy scheduler on {api}; tasks from {output / 'tasks.json'}")
            httpx.post(f"{api}/tasks/prices-broken/trigger", headers=headers, timeout=10)
            print("POST /tasks/prices-broken/trigger")
            deadline = time.monotonic() + 60
            jobs: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                jobs = httpx.get(
                    f"{api}/jobs", params={"limit": 50}, headers=headers, timeout=10
                ).json()
                good = [
                    j for j in jobs if j["task"] == "prices-every-3s" and j["state"] == "succeeded"
                ]
                if len(good) >= 2 and alerts:
                    break
                time.sleep(0.5)
        finally:
            process.terminate()
            process.wait(60)
            hook.shutdown()
            hook.server_close()
    print("\n==== Scheduler summary ====")
    for job in sorted(jobs, key=lambda j: j["id"]):
        print(f"{job['job_id']:42} attempt {job['attempt']} {job['state']:10} {job['reason']}")
    for alert in alerts:
        what = f"{alert['task']} {alert['state']} ({alert['event']})"
        print(f"Alert received: {what}: {alert['reason']}")
    good = [j for j in jobs if j["task"] == "prices-every-3s" and j["state"] == "succeeded"]
    broken = sorted((j["attempt"], j["state"]) for j in jobs if j["task"] == "prices-broken")
    ok = len(good) >= 2 and broken == [(0, "failed"), (1, "failed")] and len(alerts) == 1
    print(
        "Check:",
        "scheduled runs succeeded; the failing task was retried, then alerted" if ok else "FAILED",
    )
    return 0 if ok else 1
