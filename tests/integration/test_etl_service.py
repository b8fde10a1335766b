"""``scrapy etl`` on real servers (redis-server, clickhouse-server): prices to a raw stream,
processed into ClickHouse; a processor SIGKILLed mid-batch loses nothing and ClickHouse
holds each record once; poison records are dead-lettered while the stream flows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from crawlers.models.raw_record import RawRecord
from crawlers.sandbox import SandboxServer
from crawlers.sandbox.clickhouse_server import ClickHouseServer
from tests.conftest import ROOT, run_worker, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
STREAM = "hydra:raw:prices"
ETL = [sys.executable, "-m", "scrapy", "etl"]


def _env(redis_url: str, sink: str, tmp_path: Path, **settings: object) -> dict[str, str]:
    return worker_env(
        HYDRA_REDIS_URL=redis_url,
        HYDRA_ETL_STREAMS=STREAM,
        HYDRA_ETL_SINKS=sink,
        HYDRA_IDLE_CLOSE_SECONDS=2,
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        **settings,
    )


def _record(n: int) -> str:
    record = RawRecord(
        key=f"run/{n}", task_type="price_batch", source="prices", task="lease",
        fetched_at=datetime.now(UTC),
        item={"run_id": "run", "batch_id": "b", "id": str(n), "price": f"{n}.50",
              "currency": "EUR", "status": 200},
    )  # fmt: skip
    return record.model_dump_json()


def test_prices_through_a_raw_stream_into_clickhouse(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis,
    clickhouse_server: ClickHouseServer,
) -> None:  # fmt: skip
    with SandboxServer() as sandbox:
        run_worker(
            "-a", "ids=" + ",".join(str(n) for n in range(50)),
            "-a", f"url_template={sandbox.url_template}",
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_PRICES_QUEUE_KEY="hydra:prices:etl-test",
            HYDRA_IDLE_CLOSE_SECONDS=1,
            HYDRA_SINKS=f"stream://{STREAM}",
            HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        )  # fmt: skip
    assert redis_client.xlen(STREAM) == 50, redis_client.xlen(STREAM)
    sink = clickhouse_server.uri("default.prices_flow")
    done = subprocess.run(
        ETL, cwd=ROOT, env=_env(redis_server.url, sink, tmp_path),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Processed:      50" in done.stderr, done.stderr[-2000:]
    assert clickhouse_server.query("SELECT count() FROM default.prices_flow FINAL") == [(50,)]
    pending = redis_client.xpending(STREAM, "hydra-etl")["pending"]
    assert pending == 0


def test_a_processor_killed_mid_batch_loses_nothing(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis,
    clickhouse_server: ClickHouseServer,
) -> None:  # fmt: skip
    total = 3000
    pipe = redis_client.pipeline(transaction=False)
    for n in range(total):
        pipe.xadd(STREAM, {"message": _record(n)})
    pipe.execute()
    sink = clickhouse_server.uri("default.prices_killed")
    env = _env(redis_server.url, sink, tmp_path, HYDRA_ETL_BATCH=50, HYDRA_QUEUE_LEASE_SECONDS=2)
    victim = subprocess.Popen(
        ETL, cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:  # killed once it has acknowledged some and holds others
        groups = redis_client.xinfo_groups(STREAM)
        acked = total - int(groups[0]["lag"] or 0) - int(groups[0]["pending"]) if groups else 0
        if groups and int(groups[0]["pending"]) > 0 and acked > 200:
            break
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert int(redis_client.xinfo_groups(STREAM)[0]["pending"]) > 0  # it died holding some
    done = subprocess.run(
        ETL, cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taken over from dead processors: 0)" not in done.stderr
    final = clickhouse_server.query(
        "SELECT count(), uniqExact(key) FROM default.prices_killed FINAL"
    )
    assert final == [(total, total)]
    assert redis_client.xpending(STREAM, "hydra-etl")["pending"] == 0


def test_poison_records_are_dead_lettered_and_the_stream_flows(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    good = [_record(n) for n in range(20)]
    unknown = json.loads(_record(99))
    unknown["task_type"] = "no_such_type"
    entries = [*good[:10], "not json {", json.dumps(unknown), *good[10:]]
    for message in entries:
        redis_client.xadd(STREAM, {"message": message})
    out = tmp_path / "processed.jsonl"
    sink = f"jsonl://{out}"
    done = subprocess.run(
        ETL, cwd=ROOT,
        env=_env(redis_server.url, sink, tmp_path),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 20
    letters = [json.loads(raw) for raw in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert sorted(letter["payload"][:8] for letter in letters) == sorted(
        ["not json", json.dumps(unknown)[:8]]
    )
    assert any("no_such_type" in letter["error"] for letter in letters)
    assert redis_client.xpending(STREAM, "hydra-etl")["pending"] == 0
