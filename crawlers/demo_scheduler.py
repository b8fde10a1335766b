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


def _tasks(output: Path, url_template: str, hook_port: int, **settings: Any) -> dict[str, Any]:
    rows = output / "rows.jsonl"
    return {
        "tasks": [
            {
                "name": "prices-every-3s",
                "spider": "prices",
                "description": "Three prices from the sandbox API every 3 seconds",
                "args": {"ids": "1,2,3", "url_template": url_template},
                "settings": {
                    "HYDRA_SINKS": f"jsonl://{rows}",
                    "HYDRA_DEADLETTER_PATH": str(output / "dl.jsonl"),
                    **settings,
                },
                "schedule": {"every": "3s"},
                "expect": {"min_items": 3},
            },
            {
                "name": "prices-broken",
                "spider": "prices",
                "description": "A price API that refuses connections: retried once, then alerts",
                "args": {"ids": "1", "url_template": "http://127.0.0.1:9/price/{id}"},
                "settings": {
                    "HYDRA_BATCH_MAX_ATTEMPTS": 1,
                    "HYDRA_DEADLETTER_PATH": str(output / "dl.jsonl"),
                    **settings,
                },
                "schedule": {"trigger": "external"},
                "retry": {"max_retries": 1, "backoff_seconds": 1},
                "alerts": [{"webhook": f"http://127.0.0.1:{hook_port}/alert", "on": ["failure"]}],
            },
        ]
    }


def _start(output: Path, port: int, **env_settings: str) -> subprocess.Popen[bytes]:
    """``scrapy scheduler`` on ``port`` with the demo's tasks file, its log in ``output``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(
        HYDRA_SCHEDULER_BIND=f"127.0.0.1:{port}",
        HYDRA_DB_URL=f"sqlite:///{output.resolve()}/scheduler.db",
        HYDRA_TASKS_FILE=str((output / "tasks.json").resolve()),
        HYDRA_SCHEDULER_JOBS_DIR=str((output / "jobs").resolve()),
        HYDRA_TOPICS_PATH=str((output / "topics").resolve()),  # the jobs' status reports
        **env_settings,
    )
    with (output / "scheduler.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scrapy", "scheduler"], cwd=ROOT, env=env, stdout=log, stderr=log
        )


def _wait_until_up(api: str, key: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{api}/tasks", headers={"X-API-Key": key}, timeout=1).raise_for_status()
            return True
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _console_rows(api: str, key: str) -> int:
    """Sign in to the console as a person would and count the jobs its list shows."""
    with httpx.Client(base_url=api, timeout=10) as browser:
        browser.post("/ui/login", data={"api_key": key})
        page = browser.get("/ui/jobs")
        return page.text.count("<tr data-job=") if page.status_code == 200 else -1


def _fresh(output: Path) -> Path:
    output = output / "scheduler"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    return output


def run_scheduler_demo(output: Path) -> int:
    output = _fresh(output)
    alerts: list[dict[str, Any]] = []
    hook = _receiver(alerts)
    key, port = secrets.token_urlsafe(12), _free_port()
    api = f"http://127.0.0.1:{port}"
    print(
        "\n==== Seed 001: the scheduler (a task every 3 s, a failing task retried, an alert) ===="
    )
    shown = -1
    with SandboxServer() as sandbox:
        tasks = _tasks(output, sandbox.url_template, hook.server_port)
        (output / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
        process = _start(output, port, HYDRA_API_KEYS=key)
        headers = {"X-API-Key": key}
        try:
            if not _wait_until_up(api, key, process):
                print(f"The scheduler did not start; see {output / 'scheduler.log'}")
                return 1
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
            shown = _console_rows(api, key)
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
    print(f"The console ({api}/, signed in with the key) listed {shown} jobs")
    good = [j for j in jobs if j["task"] == "prices-every-3s" and j["state"] == "succeeded"]
    broken = sorted((j["attempt"], j["state"]) for j in jobs if j["task"] == "prices-broken")
    ok = len(good) >= 2 and broken == [(0, "failed"), (1, "failed")] and len(alerts) == 1
    ok = ok and shown >= len(good)
    print(
        "Check:",
        "scheduled runs succeeded; the failing task was retried, then alerted; the console "
        "shows them"
        if ok
        else "FAILED",
    )
    return 0 if ok else 1


def serve_console(output: Path, port: int, prometheus: str, sd_file: str) -> int:
    """``make console``: the demo's scheduler and tasks until Ctrl-C, to look at in a browser.
    Its jobs serve metrics into ``sd_file``, which ``make monitor``'s Prometheus scrapes."""
    output = _fresh(output)
    alerts: list[dict[str, Any]] = []
    hook = _receiver(alerts)
    operator, reader = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    with SandboxServer() as sandbox:
        metrics = {"HYDRA_METRICS_PORT": 0, "HYDRA_METRICS_SD_FILE": sd_file}
        tasks = _tasks(output, sandbox.url_template, hook.server_port, **metrics)
        (output / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
        process = _start(
            output, port, HYDRA_API_KEYS=operator, HYDRA_READONLY_API_KEYS=reader,
            HYDRA_CONSOLE_PROMETHEUS_URL=prometheus,
        )  # fmt: skip
        api = f"http://127.0.0.1:{port}"
        try:
            if not _wait_until_up(api, operator, process):
                print(f"The scheduler did not start; see {output / 'scheduler.log'}")
                return 1
            print(f"Console: {api}/  operator key: {operator}  read-only key: {reader}")
            print(f"Charts from {prometheus} (run `make monitor` beside this); Ctrl-C stops")
            process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            process.terminate()
            process.wait(60)
            hook.shutdown()
            hook.server_close()
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The scheduler and its console on demo tasks")
    parser.add_argument("--output", type=Path, default=ROOT / "output")
    parser.add_argument("--port", type=int, default=6820)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--sd-file", default=str(ROOT / ".monitor" / "workers.json"))
    options = parser.parse_args()
    sys.exit(serve_console(options.output, options.port, options.prometheus, options.sd_file))
