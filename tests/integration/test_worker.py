"""Real `scrapy crawl prices` workers against the sandbox API, embedded and through Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from crawlers.queues.redis import RedisLeaseQueue
from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, read_summary, run_worker, scrapy_command, worker_env
from tests.servers import RedisServer, wait_for

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
    # a worker of region eu-west consumes that region's queue
    queue = "hydra:prices:batches:eu-west"
    redis_client.rpush(queue, *[json.dumps(m) for m in good], *bad)
    redis_client.rpush("hydra:prices:batches", json.dumps(good[0]))  # not its queue
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
    # nothing left leased or queued; the default region's queue untouched
    assert redis_client.llen(queue) == 0
    assert redis_client.zcard(f"{{{queue}}}:leases") == 0
    assert redis_client.llen("hydra:prices:batches") == 1
    summary = read_summary(tmp_path / "summary.json")
    assert summary["stats"]["hydra/queue/acked"] == len(good) + len(bad)


def test_requeued_remainders_go_back_to_the_shared_queue_and_succeed_later(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A first-attempt batch is stopped by a refusal, its remainder goes back through
    Redis after a delay (held there, not in the worker), and is fetched on a later attempt."""
    with SandboxServer(refuse_rate=0.5, seed=3) as sandbox:
        ids = [str(n) for n in range(12)]
        batch = {"run_id": "r", "batch_id": "b", "ids": ids}
        redis_client.rpush("hydra:prices:batches", json.dumps(batch))
        log = run_worker(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_IDLE_CLOSE_SECONDS=0.5,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_BATCH_MAX_ATTEMPTS=50,
            HYDRA_RETRY_DELAY_SECONDS=0.05,
            HYDRA_RETRY_DELAY_MAX_SECONDS=0.2,
            **_outputs(tmp_path),
        )
        counts = sandbox.stats()
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == sorted(ids)  # each exactly once
    assert counts["refused"] >= 1 and max(row["attempt"] for row in rows) >= 1
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/ids_requeued"] >= 1
    assert redis_client.llen("hydra:deadletter") == 0
    assert "Traceback" not in log


def test_a_retry_delay_is_held_in_redis_across_worker_restarts(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with SandboxServer(fail_ids=frozenset({"2"})) as sandbox:
        batch = {"run_id": "r", "batch_id": "b", "ids": ["1", "2"]}
        redis_client.rpush("hydra:prices:batches", json.dumps(batch))
        settings: dict[str, object] = {
            "HYDRA_REDIS_URL": redis_server.url,
            "HYDRA_IDLE_CLOSE_SECONDS": 0.3,
            "HYDRA_PRICE_URL_TEMPLATE": sandbox.url_template,
            "HYDRA_BATCH_MAX_ATTEMPTS": 2,
            "HYDRA_RETRY_DELAY_SECONDS": 2,
        }
        first = subprocess.Popen(
            scrapy_command(), cwd=ROOT, env=worker_env(**settings, **_outputs(tmp_path)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: redis_client.zcard("{hydra:prices:batches}:delayed"), 30, "a retry")
            (_, due), *_ = redis_client.zrange(
                "{hydra:prices:batches}:delayed", 0, 0, withscores=True
            )
            seconds, micros = redis_client.time()
            server_ms = int(seconds) * 1000 + int(micros) // 1000
            assert 1000 < due - server_ms <= 2000  # waits in Redis, not in the worker
            first.send_signal(signal.SIGINT)  # the worker goes away; the retry stays
            _, log = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert first.returncode == 0, log[-3000:]
        assert redis_client.zcard("{hydra:prices:batches}:delayed") == 1
        run_worker(**settings, **_outputs(tmp_path / "second"), expect_exit=1)
        per_id = sandbox.stats()["per_id"]
    (entry,) = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert entry["reason"] == "max_attempts"
    assert json.loads(entry["payload"])["ids"] == ["2"]
    assert per_id == {"1": 1, "2": 2}  # one fetch per attempt, no tight loop


def test_message_that_keeps_killing_workers_is_dead_lettered_as_poison(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    payload = json.dumps({"run_id": "r", "batch_id": "p", "ids": ["1"]})
    redis_client.rpush("hydra:prices:batches", payload)

    async def die_holding_it(times: int) -> None:
        """Workers that claim the message and die: their leases expire unrenewed."""
        for n in range(times):
            queue = RedisLeaseQueue(
                redis_server.url,
                "hydra:prices:batches",
                deadletter_key="hydra:deadletter",
                lease_seconds=0.05,
                worker_id=f"dead-{n}",
            )
            await queue.open()
            result = await queue.claim(1)
            assert len(result.deliveries) == 1 and result.deliveries[0].redeliveries == n
            await queue.close()
            await asyncio.sleep(0.1)

    asyncio.run(die_holding_it(3))
    run_worker(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=0.5,
        HYDRA_QUEUE_MAX_DELIVERIES=3,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        **_outputs(tmp_path),
        expect_exit=1,  # nothing succeeded
    )
    (entry,) = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert (entry["reason"], entry["payload"]) == ("poison", payload)
    assert "reclaimed from dead workers 3 times" in entry["error"]
    assert sandbox.stats()["requests"] == 0
    assert redis_client.zcard("{hydra:prices:batches}:leases") == 0
    assert redis_client.hlen("{hydra:prices:batches}:held") == 0
