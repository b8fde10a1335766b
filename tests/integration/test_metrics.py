"""A real worker (`scrapy crawl prices` on Redis, against the sandbox price API) serves
/metrics on a free port it announces in the log and in the file_sd file; the counts it
serves match the run; it leaves the file when it closes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from crawlers.monitoring import sd_file
from tests.conftest import ROOT, scrapy_command, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _metrics(target: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_exposes_metrics_that_match_its_run(
    redis_server: RedisServer, redis_client: redis.Redis, sandbox: Any, tmp_path: Path
) -> None:
    good = [
        {"run_id": "r1", "batch_id": f"b{n}", "ids": [f"{n}-{i}" for i in range(5)]}
        for n in range(10)
    ]
    bad = ["{not json", json.dumps({"run_id": "r1", "batch_id": "x", "ids": []})]
    redis_client.rpush("hydra:prices:batches", *[json.dumps(m) for m in good], *bad)
    sd_path = tmp_path / "sd" / "workers.json"
    log_path = tmp_path / "worker.log"
    env = worker_env(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=6,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
        HYDRA_METRICS_PORT=0,
        HYDRA_METRICS_SD_FILE=sd_path,
        HYDRA_METRICS_INTERVAL_SECONDS=0.2,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            scrapy_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        groups: list[dict[str, Any]] = []
        while not groups and time.monotonic() < deadline and process.poll() is None:
            groups = sd_file.read_groups(sd_path)
            time.sleep(0.05)
        assert len(groups) == 1, log_path.read_text()[-3000:]
        (target,) = groups[0]["targets"]
        assert groups[0]["labels"]["spider"] == "prices"
        labels = (("kind", "price_batch"), ("region", "default"))
        stored = ("hydra_items_stored_total", labels)
        metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline and process.poll() is None:
            metrics = _metrics(target)
            if metrics.get(stored) == 50 and metrics.get(("hydra_messages_acked_total", ())) == 12:
                break
            time.sleep(0.1)
        assert metrics.get(stored) == 50, metrics
        assert metrics[("hydra_requests_total", (*labels, ("status", "ok")))] == 50
        assert metrics[("hydra_items_total", labels)] == 50
        assert metrics[("hydra_deadletter_total", (("reason", "invalid_message"),))] == 2
        assert metrics[("hydra_messages_claimed_total", ())] == 12
        assert metrics[("hydra_queue_depth", (("queue", "hydra:prices:batches"),))] == 0
        assert metrics[("hydra_leases_lost_total", ())] == 0
        assert metrics[("hydra_sink_flush_seconds_count", ())] >= 1
        assert metrics[("hydra_sink_failing", ())] == 0
        assert sandbox.stats()["requests"] == 50  # every request the worker made, counted
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text()
    assert f"Metrics on http://{target}/metrics" in log_text
    assert sd_file.read_groups(sd_path) == []  # removed when it closed
    with pytest.raises(OSError):
        _metrics(target)
