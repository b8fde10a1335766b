"""``make demo``, seed 002: prices -> raw stream -> ``scrapy etl`` -> ClickHouse.

A private redis-server and clickhouse-server (Debian's 18.16), the sandbox price
API, a ``prices`` crawl whose sink is the raw stream ``hydra:raw:prices``, then
``scrapy etl``, which cleans, normalises, deduplicates and enriches the records
and stores them in ClickHouse. Two records are bad on purpose (not JSON, an
unknown task type) and one is a duplicate: the summary counts each stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from crawlers.models.raw_record import RawRecord
from crawlers.sandbox import SandboxServer
from crawlers.sandbox.clickhouse_server import ClickHouseServer
from crawlers.sandbox.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
STREAM = "hydra:raw:prices"
TABLE = "default.prices"


def _env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update({name: str(value) for name, value in settings.items()})
    return env


def _scrapy(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("wb") as out:
        return subprocess.run(
            [sys.executable, "-m", "scrapy", *args], cwd=ROOT, env=env, stdout=out, stderr=out,
            timeout=600, check=False,
        ).returncode  # fmt: skip


def run_etl_demo(ids: int, output: Path) -> int:
    output = output / "etl"
    output.mkdir(parents=True, exist_ok=True)
    print("\n==== Seed 002: prices -> raw stream -> ETL -> ClickHouse ====")
    with tempfile.TemporaryDirectory(prefix="hydra-demo-etl-") as work, SandboxServer() as api:
        redis_server = RedisServer(Path(work) / "redis").start()
        clickhouse = ClickHouseServer(Path(work) / "clickhouse").start()
        client = redis_server.client()
        try:
            common = {"HYDRA_REDIS_URL": redis_server.url,
                      "HYDRA_DEADLETTER_PATH": output / "deadletter.jsonl"}  # fmt: skip
            crawl = _scrapy(
                ["crawl", "prices", "-a", "ids=" + ",".join(str(n) for n in range(1, ids + 1)),
                 "-a", f"url_template={api.url_template}"],
                _env(**common, HYDRA_PRICES_QUEUE_KEY="hydra:prices:etl-demo",
                     HYDRA_IDLE_CLOSE_SECONDS=1, HYDRA_SINKS=f"stream://{STREAM}"),
                output / "crawl.log",
            )  # fmt: skip
            if crawl != 0:
                print(f"The crawl failed; see {output / 'crawl.log'}")
                return 1
            raw = client.xlen(STREAM)
            _add_bad_records(client)
            etl = _scrapy(
                ["etl"],
                _env(**common, HYDRA_ETL_STREAMS=STREAM, HYDRA_IDLE_CLOSE_SECONDS=2,
                     HYDRA_ETL_SINKS=clickhouse.uri(TABLE)),
                output / "etl.log",
            )  # fmt: skip
            if etl != 0:
                print(f"scrapy etl failed; see {output / 'etl.log'}")
                return 1
            stored = str(clickhouse.query(f"SELECT count() FROM {TABLE} FINAL")[0][0])
            sample = clickhouse.query(f"SELECT data FROM {TABLE} FINAL ORDER BY key LIMIT 3")
            letters = [json.loads(x) for x in client.lrange("hydra:deadletter", 0, -1)]
        finally:
            client.close()
            clickhouse.stop()
            redis_server.stop()
    summary = [
        line.strip()
        for line in (output / "etl.log").read_text(encoding="utf-8").splitlines()
        if line.startswith("  ") and ":" in line
    ]
    print(f"IDs crawled:            {ids}")
    print(f"Raw records streamed:   {raw} (+3 added: a duplicate, one not JSON, one unknown type)")
    for line in summary[-7:]:
        print(f"ETL {line}")
    print(f"Rows in ClickHouse:     {stored} ({TABLE}, counted with FINAL)")
    for letter in letters:
        print(f"Dead letter:            {letter['reason']}: {letter['error'][:90]}")
    print("Sample processed rows:")
    for (text,) in sample:
        data = json.loads(text)
        shown = {"key": data.get("key"), **data.get("fields", {}),
                 "content_hash": str(data.get("content_hash", ""))[:16] + "..."}  # fmt: skip
        print(f"  {json.dumps(shown, default=str)[:200]}")
    ok = stored == str(ids) and len(letters) == 2
    print("Check:", "every ID stored once, the bad records dead-lettered" if ok else "FAILED")
    return 0 if ok else 1


def _add_bad_records(client: redis.Redis) -> None:
    entries: Any = client.xrange(STREAM, count=1)
    first = entries[0][1]["message"]
    client.xadd(STREAM, {"message": first})  # the same record again: a duplicate
    client.xadd(STREAM, {"message": "not json {"})
    unknown = RawRecord(
        key="x/1", task_type="no_such_kind", source="demo", fetched_at=datetime.now(UTC),
        item={"title": "?"},
    )  # fmt: skip
    client.xadd(STREAM, {"message": unknown.model_dump_json()})
