"""A real ``scrapy etl`` (on redis-server) serves /metrics on a free port it announces in
the log and in the file_sd file; the counts it serves match what it did to each entry
(stored, duplicate, invalid, poison); it leaves the file when it stops."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from crawlers.models.raw_record import RawRecord
from crawlers.monitoring import sd_file
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
    sd_path = tmp_path / "sd" / "targets.json"
    log_path = tmp_path / "etl.log"
    env = worker_env(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_ETL_STREAMS=STREAM,
        HYDRA_ETL_SINKS=f"jsonl://{tmp_path}/processed.jsonl",
        HYDRA_ETL_MAX_ATTEMPTS=1,
        HYDRA_QUEUE_LEASE_SECONDS=0.5,
        HYDRA_IDLE_CLOSE_SECONDS=0,  # until stopped
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        HYDRA_METRICS_PORT=0,
        HYDRA_METRICS_SD_FILE=sd_path,
        HYDRA_METRICS_INTERVAL_SECONDS=0.2,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(ETL, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not sd_file.read_groups(sd_path):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        ((group),) = sd_file.read_groups(sd_path)
        (target,) = group["targets"]
        assert group["labels"]["role"] == "etl"
        samples: Samples = {}
        while _records(samples, "stored") < 6 or samples.get(
            ("hydra_etl_pending_entries", (("stream", STREAM),))
        ):
            assert time.monotonic() < deadline, (samples, log_path.read_text()[-3000:])
            time.sleep(0.2)
            samples = _scrape(target)
        time.sleep(0.5)  # nothing more to come: the counts stay
        samples = _scrape(target)
        assert process.poll() is None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    log_text = log_path.read_text()
    assert process.returncode == 0, log_text[-3000:]

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
    assert samples[("hydra_etl_pending_entries", (("stream", STREAM),))] == 0
    assert samples[("hydra_etl_batch_seconds_count", ())] >= 1
    assert samples[("hydra_etl_sink_flush_errors_total", ())] == 0
    assert samples[("hydra_etl_sink_failing", ())] == 0
    info = {
        dict(labels)["consumer"]
        for (name, labels), _ in samples.items()
        if name == "hydra_etl_info"
    }
    assert info == {group["labels"]["worker"]}
    assert any(name.startswith("process_") for name, _ in samples)
    # announced in the log; gone from the SD file and no longer served once stopped
    assert re.search(rf"Metrics on http://{re.escape(target)}/metrics", log_text)
    assert sd_file.read_groups(sd_path) == []
    with pytest.raises(OSError):
        _scrape(target)
    assert len((tmp_path / "processed.jsonl").read_text().splitlines()) == 6
    assert redis_client.llen("hydra:deadletter") == 3


def test_a_failing_sink_shows_in_the_metrics(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Every flush to /dev/full fails (no space left): the errors count, the processor
    says it is failing, and nothing is stored or acknowledged."""
    redis_client.xadd(STREAM, {"message": _record(1)})
    sd_path = tmp_path / "targets.json"
    env = worker_env(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_ETL_STREAMS=STREAM,
        HYDRA_ETL_SINKS="jsonl:///dev/full",
        HYDRA_IDLE_CLOSE_SECONDS=0,
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        HYDRA_METRICS_PORT=0,
        HYDRA_METRICS_SD_FILE=sd_path,
        HYDRA_METRICS_INTERVAL_SECONDS=0.2,
    )
    log_path = tmp_path / "etl.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(ETL, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        samples: Samples = {}
        while samples.get(("hydra_etl_sink_flush_errors_total", ()), 0) < 2:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (samples, log_path.read_text()[-3000:])
            time.sleep(0.2)
            groups = sd_file.read_groups(sd_path)
            samples = _scrape(groups[0]["targets"][0]) if groups else {}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert samples[("hydra_etl_sink_failing", ())] == 1
    assert samples[("hydra_etl_pending_entries", (("stream", STREAM),))] == 1
    assert _records(samples, "stored") == 0
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert sd_file.read_groups(sd_path) == []
