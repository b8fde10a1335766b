"""Real `scrapy crawl prices` workers against the sandbox API, embedded and through Redis."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from crawlers.sandbox import SandboxServer
from tests.conftest import read_jsonl, read_summary, run_worker
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _outputs(tmp_path: Path) -> dict[str, Any]:
    return {
        "HYDRA_SINKS": f"jsonl://{tmp_path}/out.jsonl",
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        "HYDRA_SUMMARY_PATH": str(tmp_path / "summary.json"),
    }


def test_embedded_run_stops_batches_requeues_and_loses_nothing(tmp_path: Path) -> None:
    ids = [f"p{n}" for n in range(200)]
    with SandboxServer(refuse_rate=0.05, seed=11) as sandbox:
        run_worker(
            "-a", "ids=" + ",".join(ids), "-a", f"url_template={sandbox.url_template}",
            HYDRA_BATCH_MAX_ATTEMPTS=50, **_outputs(tmp_path),
        )  # fmt: skip
        counts = sandbox.stats()
    rows = read_jsonl(tmp_path / "out.jsonl")
    stored = [row["id"] for row in rows]
    assert sorted(stored) == sorted(ids)  # each exactly once
    assert counts["refused"] > 0
    # each refusal is one re-fetch of the refused ID; no successful ID is fetched twice
    assert counts["requests"] == len(ids) + counts["refused"]
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/batches_stopped"] == counts["refused"]
    assert max(row["attempt"] for row in rows) >= 1
    assert not (tmp_path / "dl.jsonl").exists() or not (tmp_path / "dl.jsonl").read_text()


def test_persistent_failure_ends_in_the_dead_letter(tmp_path: Path) -> None:
    with SandboxServer(fail_ids=frozenset({"b"})) as sandbox:
        run_worker(
            "-a", "ids=a,b,c", "-a", f"url_template={sandbox.url_template}",
            HYDRA_BATCH_MAX_ATTEMPTS=3, **_outputs(tmp_path),
        )  # fmt: skip
        per_id = sandbox.stats()["per_id"]
    assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")] == ["a"]
    (entry,) = read_jsonl(tmp_path / "dl.jsonl")
    assert entry["reason"] == "max_attempts"
    assert json.loads(entry["payload"])["ids"] == ["b", "c"]
    assert "HTTP 503 for id b" in entry["error"]
    assert per_id == {"a": 1, "b": 3}


def test_distributed_worker_consumes_pushed_batches_and_dead_letters_bad_ones(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    good = [
        {"run_id": "r1", "batch_id": f"b{n}", "ids": [f"{n}-{i}" for i in range(5)]}
        for n in range(10)
    ]
    bad = ["{not json", json.dumps({"run_id": "r1", "batch_id": "x", "ids": []})]
    redis_client.rpush("hydra:prices:batches", *[json.dumps(m) for m in good], *bad)
    run_worker(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=1,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        HYDRA_REGION="eu-west",
        **_outputs(tmp_path),
    )
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == sorted(i for m in good for i in m["ids"])
    assert {row["region"] for row in rows} == {"eu-west"}
    entries = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert [e["payload"] for e in entries] == bad
    assert all(e["reason"] == "invalid_message" and e["error"] for e in entries)
    assert "ids" in entries[1]["error"]
    # nothing left leased or queued
    assert redis_client.llen("hydra:prices:batches") == 0
    assert redis_client.zcard("hydra:prices:batches:leases") == 0
    summary = read_summary(tmp_path / "summary.json")
    assert summary["stats"]["hydra/queue/acked"] == len(good) + len(bad)


def test_requeued_remainders_go_back_to_the_shared_queue(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with SandboxServer(fail_ids=frozenset({"2"})) as sandbox:
        redis_client.rpush(
            "hydra:prices:batches",
            json.dumps({"run_id": "r", "batch_id": "b", "ids": ["1", "2", "3"], "attempt": 4}),
        )
        run_worker(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_IDLE_CLOSE_SECONDS=0.5,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_BATCH_MAX_ATTEMPTS=5,
            **_outputs(tmp_path),
        )
    (entry,) = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert entry["reason"] == "max_attempts"
    assert json.loads(entry["payload"])["ids"] == ["2", "3"]
    assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")] == ["1"]


def test_message_that_keeps_killing_workers_is_dead_lettered_as_poison(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    payload = json.dumps({"run_id": "r", "batch_id": "p", "ids": ["1"]})
    redis_client.rpush("hydra:prices:batches", payload)
    # as if three workers had died holding it
    redis_client.hset(
        "hydra:prices:batches:redeliveries", hashlib.sha1(payload.encode()).hexdigest(), 3
    )
    run_worker(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=0.5,
        HYDRA_QUEUE_MAX_DELIVERIES=3,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        **_outputs(tmp_path),
    )
    (entry,) = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert (entry["reason"], entry["payload"]) == ("poison", payload)
    assert sandbox.stats()["requests"] == 0
    assert redis_client.hlen("hydra:prices:batches:redeliveries") == 0
