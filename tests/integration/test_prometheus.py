"""A real Prometheus scrapes a real worker it found through the worker's file_sd file, and
one of the shipped alert rules (`HydraDeadLettersRising`) fires through a real
Alertmanager to a webhook receiver.

Prometheus and Alertmanager come from Debian's `prometheus` and `prometheus-alertmanager`
packages (installed by `make test`); they run as plain processes on free loopback ports,
with their data in the test's temporary directory. The worker (`scrapy crawl prices` on
Redis, against the sandbox price API) runs until it is stopped, so it is scraped for as
long as the tests need."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, scrapy_command, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

RULES = ROOT / "monitoring" / "rules" / "hydra.rules.yml"
WORKER_JOB = "hydra-workers"
QUEUE = "hydra:prices:batches"
INVALID = "{not json"  # dead-lettered as invalid_message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(f"{names[0]} missing: `make test` installs it from Debian's packages")


def _closed(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def _wait(condition: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(what())


class _Webhook:
    """Alertmanager's webhook receiver: keeps every notification's JSON body."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alertnames(self) -> set[str]:
        return {
            alert["labels"]["alertname"]
            for notification in list(self.notifications)
            for alert in notification.get("alerts", [])
            if alert.get("status") == "firing"
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class _Processes:
    """Child processes with their logs; stopped in reverse order."""

    tmp: Path
    started: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def start(self, name: str, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop_all)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.started.append((name, process, log))
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for _, process, log in reversed(self.started):
            self.stop(process)
            log.close()


@dataclass
class Stack:
    prometheus: str  # http://127.0.0.1:PORT
    alertmanager: str
    webhook: _Webhook
    worker: subprocess.Popen[bytes]
    processes: _Processes
    redis_server: RedisServer

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = _get_json(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{self.processes.log(name)}" for name, _, _ in self.processes.started
        )


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    prometheus_bin = _binary("prometheus")
    alertmanager_bin = _binary("prometheus-alertmanager", "alertmanager")
    processes = _Processes(tmp)
    webhook = _Webhook()
    sandbox = SandboxServer()
    sandbox.start()
    client = redis_server.client()
    try:
        client.flushall()
        # Alertmanager: one route, to the webhook, sent at once
        am_port = _free_port()
        am_config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook.url}]}],
        }
        (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        processes.start(
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
        )
        alertmanager = f"http://127.0.0.1:{am_port}"
        # Prometheus: the shipped rules, the worker found through its SD file, every second
        sd_path = tmp / "sd" / "workers.json"
        prom_port = _free_port()
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": WORKER_JOB,
                    "scrape_timeout": "1s",
                    "file_sd_configs": [{"files": [str(sd_path)], "refresh_interval": "1s"}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        processes.start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        # the worker: some batches to fetch, then it waits for more until stopped
        batches = [
            {"run_id": "r1", "batch_id": f"b{n}", "ids": [f"{n}-{i}" for i in range(5)]}
            for n in range(4)
        ]
        client.rpush(QUEUE, *[json.dumps(batch) for batch in batches])
        worker = processes.start(
            "worker",
            scrapy_command(),
            cwd=ROOT,
            env=worker_env(
                HYDRA_REDIS_URL=redis_server.url,
                HYDRA_IDLE_CLOSE_SECONDS=0,  # until stopped
                HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
                HYDRA_SINKS=f"jsonl://{tmp}/out.jsonl",
                HYDRA_METRICS_PORT=0,
                HYDRA_METRICS_SD_FILE=sd_path,
                HYDRA_METRICS_INTERVAL_SECONDS=0.2,
            ),
        )
        stack = Stack(prometheus, alertmanager, webhook, worker, processes, redis_server)
        for url in (f"{prometheus}/-/ready", f"{alertmanager}/-/ready"):
            _wait(functools.partial(_ready, url), 30, stack.logs)
        yield stack
        # a graceful stop: the worker leaves the SD file and exits 0
        assert processes.stop(worker) == 0, stack.logs()
        assert json.loads(sd_path.read_text()) == []
    finally:
        processes.stop_all()
        webhook.close()
        sandbox.stop()
        client.close()


def test_prometheus_scrapes_a_worker_it_found_through_the_sd_file(stack: Stack) -> None:
    up = _wait(
        lambda: [s for s in stack.query(f'up{{job="{WORKER_JOB}"}}') if s["value"][1] == "1"],
        30,
        lambda: f"worker never up in Prometheus\n{stack.logs()}",
    )
    (series,) = up
    assert series["metric"]["spider"] == "prices"  # the labels from the SD file
    instance = series["metric"]["instance"]
    requests = _wait(
        lambda: [
            s
            for s in stack.query(
                f'hydra_requests_total{{job="{WORKER_JOB}",instance="{instance}",status="ok"}}'
            )
            if float(s["value"][1]) > 0
        ],
        30,
        lambda: f"no hydra_requests_total scraped\n{stack.logs()}",
    )
    assert requests[0]["metric"]["kind"] == "price_batch"
    # every request of the 4 batches of 5 IDs, counted once the worker has fetched them
    _wait(
        lambda: stack.query(
            f'sum(hydra_requests_total{{instance="{instance}",status="ok"}}) == 20'
        ),
        30,
        lambda: f"hydra_requests_total never reached 20\n{stack.logs()}",
    )
    assert stack.worker.poll() is None


def test_a_shipped_alert_fires_through_alertmanager_to_a_webhook(stack: Stack) -> None:
    """`HydraDeadLettersRising` (more than 10 dead letters of one reason in 15 min):
    increase() needs the counter seen before it rises, so one invalid message first,
    then 15 more once Prometheus has scraped the first."""
    client = stack.redis_server.client()
    try:
        reason = 'hydra_deadletter_total{reason="invalid_message"}'
        client.rpush(QUEUE, INVALID)
        _wait(
            lambda: stack.query(f"{reason} == 1"),
            30,
            lambda: f"first dead letter never scraped\n{stack.logs()}",
        )
        time.sleep(1.5)  # another scrape at 1, so the rise is seen as an increase
        client.rpush(QUEUE, *[INVALID] * 15)
    finally:
        client.close()
    _wait(
        lambda: "HydraDeadLettersRising" in stack.webhook.alertnames(),
        30,
        lambda: f"no alert at the webhook: {stack.webhook.notifications}\n{stack.logs()}",
    )
    (notification,) = [
        n
        for n in stack.webhook.notifications
        if any(a["labels"]["alertname"] == "HydraDeadLettersRising" for a in n["alerts"])
    ][:1]
    (alert,) = [
        a for a in notification["alerts"] if a["labels"]["alertname"] == "HydraDeadLettersRising"
    ]
    assert alert["status"] == "firing"
    assert alert["labels"]["reason"] == "invalid_message"
    assert alert["labels"]["severity"] == "warning"
    assert "dead letters (invalid_message)" in alert["annotations"]["summary"]
    assert notification["receiver"] == "webhook"
    # Alertmanager holds it too
    alerts = _get_json(f"{stack.alertmanager}/api/v2/alerts")
    assert "HydraDeadLettersRising" in {a["labels"]["alertname"] for a in alerts}


def test_make_monitor_runs_prometheus_and_alertmanager_from_the_shipped_configs(
    tmp_path: Path,
) -> None:
    """`make monitor`: both in the foreground, Prometheus with the shipped rules, sending
    to the Alertmanager beside it and watching the SD file under MONITOR; an interrupt
    (Ctrl-C: SIGINT to the process group) stops both."""
    prometheus, alertmanager = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    command = ["make", "--no-print-directory", "monitor", f"MONITOR={tmp_path}"]
    command += [f"PROMETHEUS_LISTEN={prometheus}", f"ALERTMANAGER_LISTEN={alertmanager}"]
    log_path = tmp_path / "make.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        for url in (f"http://{prometheus}/-/ready", f"http://{alertmanager}/-/ready"):
            _wait(functools.partial(_ready, url), 30, log_path.read_text)
        active = _wait(
            lambda: _get_json(f"http://{prometheus}/api/v1/alertmanagers")["data"][
                "activeAlertmanagers"
            ],
            30,
            log_path.read_text,
        )
        assert [a["url"] for a in active] == [f"http://{alertmanager}/api/v2/alerts"]
        groups = _get_json(f"http://{prometheus}/api/v1/rules")["data"]["groups"]
        rules = {rule["name"] for group in groups for rule in group["rules"]}
        assert {"HydraDeadLettersRising", "HydraSinkFailing", "HydraServiceDown"} <= rules
        config = _get_json(f"http://{prometheus}/api/v1/status/config")["data"]["yaml"]
        assert str(tmp_path / "workers.json") in config
        assert (tmp_path / "prometheus").is_dir() and (tmp_path / "alertmanager").is_dir()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)  # interrupted: its status says so
        for address in (prometheus, alertmanager):  # both stopped, not left behind
            _wait(functools.partial(_closed, address), 20, log_path.read_text)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_shipped_alertmanager_config_is_valid() -> None:
    process = subprocess.run(
        [_binary("amtool"), "check-config", str(ROOT / "monitoring" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0 and "SUCCESS" in process.stdout, process.stdout + process.stderr
