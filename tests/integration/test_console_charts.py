"""The console's charts ask a real Prometheus (Debian's package) that scrapes a real
prometheus-client exporter of the workers' counters: each chart draws a line per task kind
and region; without Prometheus, or with one that does not answer, the page says so."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.consolefixtures import console_client, console_config
from tests.integration.test_prometheus import _binary, _free_port, _Processes, _ready, _wait

pytestmark = pytest.mark.integration
KEY = "op-charts-key"
ODD_REGION = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("charts")
    registry = CollectorRegistry()
    requests = Counter("hydra_requests", "", ["kind", "region", "status"], registry=registry)
    items = Counter("hydra_items", "", ["kind", "region"], registry=registry)
    exporter_port = _free_port()
    server, _ = start_http_server(exporter_port, "127.0.0.1", registry=registry)
    stop = threading.Event()

    def work() -> None:
        while not stop.wait(0.1):
            requests.labels("prices", "eu-west", "200").inc(10)
            requests.labels("prices", "eu-west", "error").inc(1)
            requests.labels("fetch", ODD_REGION, "503").inc(2)
            items.labels("prices", "eu-west").inc(10)

    threading.Thread(target=work, daemon=True).start()
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "w", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    processes = _Processes(tmp)
    processes.start(
        "prometheus",
        [
            _binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(functools.partial(_ready, f"{url}/-/ready"), 30, lambda: processes.log("prometheus"))
        yield url
    finally:
        stop.set()
        processes.stop_all()
        server.shutdown()
        server.server_close()


def _console(tmp_path: Path, prometheus: str) -> TestClient:
    return console_client(console_config(tmp_path, KEY, HYDRA_CONSOLE_PROMETHEUS_URL=prometheus))


def _series(page: str) -> list[str]:
    return re.findall(r'<polyline class="series" data-series="([^"]+)"', page)


def test_charts_draw_a_line_per_kind_and_region_from_prometheus(
    prometheus: str, tmp_path: Path
) -> None:
    with _console(tmp_path, prometheus) as client:
        client.post("/ui/login", data={"api_key": KEY})

        def drawn() -> str | None:
            page = client.get("/ui/charts?range=15m").text
            return page if len(_series(page)) >= 4 else None  # rate() needs two samples

        page = _wait(drawn, 40, lambda: client.get("/ui/charts?range=15m").text[-2000:])
    charts = re.findall(r'<section class="card chart-card"><h2>([^<]+)</h2>(.*?)</section>', page)
    titles = [title for title, _ in charts]
    assert titles[0] == "Requests per second" and titles[1] == "Items per second"
    requests, items, errors = (_series(svg) for _, svg in charts)
    odd = "fetch / &lt;script&gt;alert(1)&lt;/script&gt;"
    assert sorted(requests) == sorted(["prices / eu-west", odd])
    assert items == ["prices / eu-west"]
    assert sorted(errors) == sorted(["prices / eu-west", odd])  # 5xx and download errors
    assert "<script>alert" not in page
    assert 'id="charts-problem"' not in page


def test_charts_explain_a_missing_or_silent_prometheus(tmp_path: Path) -> None:
    with _console(tmp_path, "") as client:
        client.post("/ui/login", data={"api_key": KEY})
        page = client.get("/ui/charts").text
        assert 'id="charts-off"' in page and "HYDRA_CONSOLE_PROMETHEUS_URL" in page
    silent = f"http://user:pw-secret@127.0.0.1:{_free_port()}"
    with _console(tmp_path, silent) as client:
        client.post("/ui/login", data={"api_key": KEY})
        answer = client.get("/ui/charts")
        assert answer.status_code == 200
        assert "Prometheus did not answer (ConnectError)" in answer.text
        assert "pw-secret" not in answer.text
