"""A whole hydra on loopback for tests and the demo: controller, sandbox, region proxies."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, read_jsonl, worker_env
from tests.servers import free_port

API_KEY = "test-key-1"


def ring(names: list[str]) -> list[dict[str, Any]]:
    """Regions whose neighbours are the next two along a ring."""
    return [
        {"name": name, "neighbours": [names[(i + 1) % len(names)], names[(i + 2) % len(names)]]}
        for i, name in enumerate(names)
    ]


class ControllerProcess:
    def __init__(self, tmp_path: Path, redis_url: str, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "controller.log"
        self.settings = {
            "HYDRA_REDIS_URL": redis_url,
            "HYDRA_API_KEYS": API_KEY,
            "HYDRA_CONTROLLER_BIND": f"127.0.0.1:{self.port}",
            "HYDRA_QUEUE_LEASE_SECONDS": 3,
            "HYDRA_ACK_INTERVAL_SECONDS": 0.2,
            "HYDRA_RETRY_DELAY_SECONDS": 0.2,
            "HYDRA_DISPATCH_RATE": 500,
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ControllerProcess:
        log = self.log_path.open("ab")
        env = worker_env(**self.settings)
        command = [*_python_m_scrapy(), "controller"]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/openapi.json", timeout=1).raise_for_status()
                return self
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"the controller did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def call(
        self, method: str, path: str, key: str | None = API_KEY, **kwargs: Any
    ) -> httpx.Response:
        headers = {"X-API-Key": key} if key is not None else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_finished(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run: dict[str, Any] = self.call("GET", f"/runs/{run_id}").json()
            if run["status"] == "finished":
                return run
            assert time.monotonic() < deadline, f"{run}\n{self.log()}"
            time.sleep(0.25)


def _python_m_scrapy() -> list[str]:
    import sys

    return [sys.executable, "-m", "scrapy"]


def stored_ids(tmp_path: Path, pattern: str = "rows*.jsonl") -> list[str]:
    return [row["id"] for path in sorted(tmp_path.glob(pattern)) for row in read_jsonl(path)]


def regions_json(regions: list[dict[str, Any]]) -> str:
    return json.dumps(regions)
