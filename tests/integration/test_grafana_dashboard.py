"""Every query of the Grafana dashboard (monitoring/grafana/hydra.json) returns series from a
real Prometheus that scraped a demo-like run: Grafana is not installable here, so this is
how a panel is shown to be real rather than a typo over a metric nobody exposes.

The run: a worker (`scrapy crawl prices` on Redis, against the sandbox price API, one ID
answered 503, one invalid message) writing to a raw stream, `scrapy etl` processing that
stream (one invalid record), both found through the file_sd file; `scrapy controller`
(its regions) and `scrapy scheduler` (one failed job) as static targets. Prometheus
scrapes every second, so rate() has its two samples within seconds."""

from __future__ import annotations

import json
import math
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, scrapy_command, worker_env
from tests.integration.test_prometheus import _binary, _free_port, _get_json, _Processes, _wait
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "monitoring" / "grafana" / "hydra.json"
QUEUE = "hydra:prices:batches"
STREAM = "hydra:raw:prices"
#: Grafana's variables, as a dashboard over a 1 s scrape would fill them in
VARIABLES = {"__rate_interval": "1m", "__interval": "1s", "__range": "5m", "datasource": ""}
#: panel title -> why the run cannot produce its series; keep it empty if at all possible
ALLOWED_EMPTY: dict[str, str] = {}


def _targets() -> list[tuple[str, str]]:
    """(panel title, query with Grafana's variables filled in) of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            found.append((panel["title"], _fill(target["expr"])))
    return found


def _fill(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"Grafana variable ${name} unknown to this test: add it"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = _get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _has_numbers(result: list[dict[str, Any]]) -> bool:
    """Some series with a number (a quantile over no observations is NaN)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def _start_scheduler(processes: _Processes, tmp: Path, port: int) -> None:
    env = worker_env(
        HYDRA_API_KEYS="op",
        HYDRA_DB_URL=f"sqlite:///{tmp}/state.db",
        HYDRA_TOPICS_PATH=str(tmp / "topics"),
        HYDRA_SCHEDULER_JOBS_DIR=str(tmp / "jobs"),
    )
    command = [sys.executable, "-m", "scrapy", "scheduler", "--bind", f"127.0.0.1:{port}"]
    processes.start("scheduler", command, cwd=ROOT, env=env)


def _fail_a_job(port: int, logs: Any) -> None:
    """One job in the state database: its task's token is unset, so it fails at once."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "op"}) as api:

        def answers() -> bool:
            try:
                return api.get("/tasks").status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        _wait(answers, 30, logs)
        task = {
            "spider": "prices",
            "args": {"token": {"env": "HYDRA_TEST_UNSET_TOKEN"}},
            "schedule": {"trigger": "external"},
        }
        assert api.put("/tasks/no-token", json=task).status_code == 200
        assert api.post("/tasks/no-token/trigger").status_code in (200, 202)


def test_every_dashboard_panel_query_returns_series_from_a_demo_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    targets = _targets()
    titles = {title for title, _ in targets}
    assert set(ALLOWED_EMPTY) <= titles, "the allow-list names a panel that is gone"
    client = redis_server.client()
    client.flushall()
    sandbox = SandboxServer(fail_ids=frozenset({"bad"}))
    sandbox.start()
    processes = _Processes(tmp_path)

    def logs() -> str:
        return "\n".join(f"--- {n}\n{processes.log(n)}" for n, _, _ in processes.started)

    try:
        sd_path = tmp_path / "sd" / "targets.json"
        controller_port, scheduler_port, prom_port = _free_port(), _free_port(), _free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "hydra-workers",
                    "file_sd_configs": [{"files": [str(sd_path)], "refresh_interval": "1s"}],
                },
                {
                    "job_name": "hydra-services",
                    "metrics_path": "/metrics/",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{controller_port}", f"127.0.0.1:{scheduler_port}"]}
                    ],
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.start(
            "prometheus",
            [
                _binary("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        # the workload: batches (one with an ID the sandbox answers 503) and an invalid
        # message for the worker; an invalid record in the stream for the ETL
        batches = [
            {"run_id": "r1", "batch_id": f"b{n}", "ids": [f"{n}-{i}" for i in range(5)]}
            for n in range(6)
        ]
        batches.append({"run_id": "r1", "batch_id": "failing", "ids": ["x-1", "bad"]})
        client.rpush(QUEUE, *[json.dumps(batch) for batch in batches], "{not json")
        client.xadd(STREAM, {"message": "not json {"})
        metrics = {
            "HYDRA_METRICS_PORT": 0,
            "HYDRA_METRICS_SD_FILE": sd_path,
            "HYDRA_METRICS_INTERVAL_SECONDS": 0.2,
            "HYDRA_IDLE_CLOSE_SECONDS": 0,  # until stopped
            "HYDRA_DEADLETTER_PATH": tmp_path / "dl.jsonl",
        }
        processes.start(
            "worker",
            scrapy_command(),
            cwd=ROOT,
            env=worker_env(
                HYDRA_REDIS_URL=redis_server.url,
                HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
                HYDRA_SINKS=f"stream://{STREAM}",
                HYDRA_RETRY_DELAY_SECONDS=0.5,
                **metrics,
            ),
        )
        processes.start(
            "etl",
            [sys.executable, "-m", "scrapy", "etl"],
            cwd=ROOT,
            env=worker_env(
                HYDRA_REDIS_URL=redis_server.url,
                HYDRA_ETL_STREAMS=STREAM,
                HYDRA_ETL_SINKS=f"jsonl://{tmp_path}/etl.jsonl",
                **metrics,
            ),
        )
        # the controller on a database of its own: its region's worker (which it starts)
        # must not take the batches above
        regions = [{"name": "eu", "start": True}, {"name": "us"}]
        processes.start(
            "controller",
            [
                sys.executable,
                "-m",
                "scrapy",
                "controller",
                "--bind",
                f"127.0.0.1:{controller_port}",
            ],
            cwd=ROOT,
            env=worker_env(
                HYDRA_REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/1",
                HYDRA_API_KEYS="k",
                HYDRA_REGIONS=json.dumps(regions),
                HYDRA_IDLE_CLOSE_SECONDS=0,
                HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            ),
        )
        _start_scheduler(processes, tmp_path, scheduler_port)
        _fail_a_job(scheduler_port, logs)
        # all four up, each scraped a few times: rate() and increase() have their samples
        _wait(
            lambda: (
                _query(prometheus, "count(up == 1) == 4")
                and _query(prometheus, "count(count_over_time(up[1m]) >= 4) == 4")
            ),
            60,
            lambda: f"not every target up and scraped\n{logs()}",
        )
        # a second wave while Prometheus watches: the flushes and batches it sees happen
        # give the duration histograms their rates (their quantiles are NaN without)
        client.rpush(QUEUE, *[json.dumps({**batch, "run_id": "r2"}) for batch in batches[:3]])
        pending = dict.fromkeys(targets)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for title, promql in list(pending):
                if _has_numbers(_query(prometheus, promql)):
                    del pending[title, promql]
            time.sleep(0.5)
        missing = [title for title, _ in pending if title not in ALLOWED_EMPTY]
        assert not missing, f"panels without series: {sorted(pending)}\n{logs()}"
    finally:
        processes.stop_all()
        sandbox.stop()
        client.close()
    codes = {name: process.returncode for name, process, _ in processes.started}
    assert codes["worker"] == codes["etl"] == 0, (codes, logs())
    assert json.loads(sd_path.read_text()) == []  # both left the SD file
