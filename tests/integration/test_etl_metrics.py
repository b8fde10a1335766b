"""A real ``scrapy etl`` (on redis-server) serves /metrics on a free port it announces in
the log and in the file_sd file; the counts it serves match what it did to each entry
(stored, duplicate, invalid, poison, refused by a sink) and show a sink that fails; it
leaves the file when it stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from crawlers.models.raw_record import RawRecord
from crawlers.monitoring import sd_file
from crawlers.sandbox.clickhouse_server import ClickHouseServer
from tests.conftest import ROOT, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
STREAM = "hydra:raw:prices"
GROUP = "hydra-etl"
ETL = [sys.executable, "-m", "scrapy", "etl"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _record(n: int, task_type: str = "price_batch") -> str:
    record = RawRecord(
        key=f"run/{n}", task_type=task_type, source="prices", task="lease",
        fetched_at=datetime.now(UTC),
        item={"run_id": "run", "batch_id": "b", "id": str(n), "price": f"{n}.50",
              "currency": "EUR", "status": 200},
    )  # fmt: skip
    return record.model_dump_json()


def _scrape(target: str) -> Samples:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _records(samples: Samples, outcome: str) -> float:
    key = ("hydra_etl_records_total", (("outcome", outcome), ("stream", STREAM)))
    return samples.get(key, -1.0)


def _poison_entry(client: redis.Redis) -> None:
    """An entry a dead processor was handed twice (read, then claimed): with
    HYDRA_ETL_MAX_ATTEMPTS=1 its next delivery dead-letters it as poison."""
    client.xadd(STREAM, {"message": _record(100)})
    client.xgroup_create(STREAM, GROUP, id="0")
    ((_, ((entry_id, _),)),) = client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=1)
    client.xclaim(STREAM, GROUP, "dead", 0, [entry_id])


@dataclass
class _Run:
    samples: Samples
    group: dict[str, Any]
    log: str
    returncode: int

    @property
    def target(self) -> str:
        return str(self.group["targets"][0])


def _run_etl(
    redis_url: str, tmp_path: Path, until: Callable[[Samples], bool], **settings: object
) -> _Run:
    """``scrapy etl`` with metrics on a free port, scraped through its SD file entry until
    ``until(samples)``, then stopped with SIGTERM; the SD file is empty afterwards."""
    sd_path = tmp_path / "sd" / "targets.json"
    log_path = tmp_path / "etl.log"
    env = worker_env(
        HYDRA_REDIS_URL=redis_url,
        HYDRA_ETL_STREAMS=STREAM,
        HYDRA_IDLE_CLOSE_SECONDS=0,  # until stopped
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        HYDRA_METRICS_PORT=0,
        HYDRA_METRICS_SD_FILE=sd_path,
        HYDRA_METRICS_INTERVAL_SECONDS=0.2,
        **settings,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(ETL, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        samples: Samples = {}
        groups: list[dict[str, Any]] = []
        while not groups or not until(samples):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (samples, log_path.read_text()[-3000:])
            time.sleep(0.2)
            groups = sd_file.read_groups(sd_path)
            samples = _scrape(groups[0]["targets"][0]) if groups else {}
        time.sleep(0.5)  # nothing more to come: the counts stay
        samples = _scrape(groups[0]["targets"][0])
        assert process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert sd_file.read_groups(sd_path) == []  # it left the file
    (group,) = groups
    return _Run(samples, group, log_path.read_text(), process.returncode)


def _drained(samples: Samples) -> bool:
    return samples.get(("hydra_etl_pending_entries", (("stream", STREAM),))) == 0


def test_an_etl_processor_exposes_metrics_that_match_what_it_did(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    _poison_entry(redis_client)
    unknown = json.loads(_record(99))
    unknown["task_type"] = "no_such_type"
    good = [_record(n) for n in range(6)]
    entries = [*good, good[2], "not json {", json.dumps(unknown)]
    for message in entries:
        redis_client.xadd(STREAM, {"message": message})
    run = _run_etl(
        redis_server.url,
        tmp_path,
        lambda samples: _records(samples, "stored") >= 6 and _drained(samples),
        HYDRA_ETL_SINKS=f"jsonl://{tmp_path}/processed.jsonl",
        HYDRA_ETL_MAX_ATTEMPTS=1,
        HYDRA_QUEUE_LEASE_SECONDS=0.5,
    )
    assert run.returncode == 0, run.log[-3000:]
    samples = run.samples
    assert run.group["labels"]["role"] == "etl"

    expected = {"stored": 6, "duplicate": 1, "invalid": 2, "poison": 1, "sink_rejected": 0}
    assert {outcome: _records(samples, outcome) for outcome in expected} == expected
    invalid = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "hydra_etl_invalid_records_total"
    }
    assert invalid == {"invalid_json": 1, "unknown_task_type": 1}
    assert samples[("hydra_etl_entries_reclaimed_total", (("stream", STREAM),))] == 1
    assert samples[("hydra_etl_lag_entries", (("stream", STREAM),))] == 0
    assert samples[("hydra_etl_batch_seconds_count", ())] >= 1
    assert samples[("hydra_etl_sink_flush_errors_total", ())] == 0
    assert samples[("hydra_etl_sink_failing", ())] == 0
    info = {
        dict(labels)["consumer"]
        for (name, labels), _ in samples.items()
        if name == "hydra_etl_info"
    }
    assert info == {run.group["labels"]["worker"]}
    assert any(name.startswith("process_") for name, _ in samples)
    # announced in the log; no longer served once stopped
    assert f"Metrics on http://{run.target}/metrics" in run.log
    with pytest.raises(OSError):
        _scrape(run.target)
    assert len((tmp_path / "processed.jsonl").read_text().splitlines()) == 6
    assert redis_client.llen("hydra:deadletter") == 3


def test_a_failing_sink_shows_in_the_metrics(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Every flush to /dev/full fails (no space left): the errors count, the processor
    says it is failing, and nothing is stored or acknowledged."""
    redis_client.xadd(STREAM, {"message": _record(1)})
    run = _run_etl(
        redis_server.url,
        tmp_path,
        lambda samples: samples.get(("hydra_etl_sink_flush_errors_total", ()), 0) >= 2,
        HYDRA_ETL_SINKS="jsonl:///dev/full",
    )
    assert run.returncode == 0, run.log[-3000:]  # stopped while failing: nothing acked
    assert run.samples[("hydra_etl_sink_failing", ())] == 1
    assert run.samples[("hydra_etl_pending_entries", (("stream", STREAM),))] == 1
    assert _records(run.samples, "stored") == 0


def test_rows_a_sink_refuses_count_as_sink_rejected(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path,
    clickhouse_server: ClickHouseServer,
) -> None:  # fmt: skip
    """A ClickHouse table with no column for the rows refuses each of them for good."""
    clickhouse_server.query(
        "CREATE TABLE IF NOT EXISTS default.etl_refuses (n UInt8) ENGINE = MergeTree ORDER BY n"
    )
    for n in range(3):
        redis_client.xadd(STREAM, {"message": _record(n)})
    run = _run_etl(
        redis_server.url,
        tmp_path,
        lambda samples: _records(samples, "sink_rejected") >= 3 and _drained(samples),
        HYDRA_ETL_SINKS=clickhouse_server.uri("default.etl_refuses"),
    )
    assert run.returncode == 0, run.log[-3000:]
    assert _records(run.samples, "sink_rejected") == 3
    assert _records(run.samples, "stored") == 0
    assert redis_client.llen("hydra:deadletter") == 3
