"""At-least-once delivery: a worker killed with SIGKILL mid-run loses no price ID."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, read_summary, scrapy_command, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

IDS = [f"id-{n:04d}" for n in range(1000)]


def _worker(tmp_path: Path, name: str, redis_url: str, template: str) -> subprocess.Popen[bytes]:
    env = worker_env(
        HYDRA_REDIS_URL=redis_url,
        HYDRA_PRICE_URL_TEMPLATE=template,
        HYDRA_QUEUE_LEASE_SECONDS=2,
        HYDRA_QUEUE_PREFETCH=4,
        HYDRA_IDLE_CLOSE_SECONDS=4,
        HYDRA_SINKS=f"jsonl://{tmp_path}/{name}.jsonl",
        HYDRA_SUMMARY_PATH=str(tmp_path / f"{name}.summary.json"),
    )
    log = (tmp_path / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(scrapy_command(), cwd=ROOT, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def _wait_until_stored(
    worker: subprocess.Popen[bytes], tmp_path: Path, name: str, rows: int
) -> None:
    """Block until the worker's sink holds ``rows`` rows, i.e. it is mid-run."""
    deadline = time.monotonic() + 60
    while len(read_jsonl(tmp_path / f"{name}.jsonl")) < rows:
        assert worker.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{name} never got going"
        time.sleep(0.05)


def test_sigkilled_worker_loses_no_task(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    batches = [
        json.dumps({"run_id": "crash", "batch_id": f"b{n:03d}", "ids": IDS[n : n + 20]})
        for n in range(0, len(IDS), 20)
    ]
    redis_client.rpush("hydra:prices:batches", *batches)
    with SandboxServer(delay_seconds=0.02) as sandbox:
        victim = _worker(tmp_path, "victim", redis_server.url, sandbox.url_template)
        survivor = _worker(tmp_path, "survivor", redis_server.url, sandbox.url_template)
        try:
            _wait_until_stored(victim, tmp_path, "victim", 60)
            held = redis_client.zcard("hydra:prices:batches:leases")
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            assert survivor.wait(120) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
        finally:
            for process in (victim, survivor):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    stored = {
        row["id"]
        for name in ("victim", "survivor")
        for row in read_jsonl(tmp_path / f"{name}.jsonl")
    }
    assert held > 0
    assert stored == set(IDS)
    assert redis_client.llen("hydra:deadletter") == 0
    assert redis_client.llen("hydra:prices:batches") == 0
    assert redis_client.zcard("hydra:prices:batches:leases") == 0
    stats = read_summary(tmp_path / "survivor.summary.json")["stats"]
    assert stats["hydra/queue/reclaimed"] >= 1
    # duplicates are bounded (at most the victim's held batches) and visible
    assert 0 < stats["hydra/prices/ids_redelivered"] <= 4 * 20 * stats["hydra/queue/reclaimed"]
    assert not (tmp_path / "victim.summary.json").exists()


def test_graceful_shutdown_requeues_only_what_was_not_fetched(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = IDS[:300]
    batches = [
        json.dumps({"run_id": "stop", "batch_id": f"b{n:03d}", "ids": ids[n : n + 20]})
        for n in range(0, len(ids), 20)
    ]
    redis_client.rpush("hydra:prices:batches", *batches)
    with SandboxServer(delay_seconds=0.02) as sandbox:
        first = _worker(tmp_path, "first", redis_server.url, sandbox.url_template)
        try:
            _wait_until_stored(first, tmp_path, "first", 40)
            first.send_signal(signal.SIGINT)
            assert first.wait(60) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert redis_client.zcard("hydra:prices:batches:leases") == 0  # nothing left leased
        second = _worker(tmp_path, "second", redis_server.url, sandbox.url_template)
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()[-3000:]
        per_id = sandbox.stats()["per_id"]
    rows = [
        row["id"] for name in ("first", "second") for row in read_jsonl(tmp_path / f"{name}.jsonl")
    ]
    assert sorted(rows) == sorted(ids)  # every ID stored exactly once
    assert set(per_id.values()) == {1}  # and fetched exactly once
    stats = read_summary(tmp_path / "first.summary.json")["stats"]
    assert stats["hydra/queue/resumed"] >= 1
    assert stats.get("hydra/queue/released", 0) == 0
