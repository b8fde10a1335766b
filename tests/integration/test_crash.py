"""At-least-once delivery: a worker killed with SIGKILL mid-run loses no price ID, and the
IDs it had made durable before its last checkpoint are not fetched again."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from crawlers.models import PriceBatch
from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, read_summary, scrapy_command, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

IDS = [f"id-{n:04d}" for n in range(1000)]
KEY = "hydra:prices:batches"


def _worker(
    tmp_path: Path, name: str, redis_url: str, template: str, **settings: object
) -> subprocess.Popen[bytes]:
    env = worker_env(
        HYDRA_REDIS_URL=redis_url,
        HYDRA_PRICE_URL_TEMPLATE=template,
        HYDRA_QUEUE_LEASE_SECONDS=2,
        HYDRA_QUEUE_PREFETCH=4,
        HYDRA_IDLE_CLOSE_SECONDS=4,
        HYDRA_ACK_INTERVAL_SECONDS=0.2,
        HYDRA_SINKS=f"jsonl://{tmp_path}/{name}.jsonl",
        HYDRA_SUMMARY_PATH=str(tmp_path / f"{name}.summary.json"),
        **settings,
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


def _push_batches(client: redis.Redis, ids: list[str], size: int, run_id: str) -> None:
    batches = [
        json.dumps({"run_id": run_id, "batch_id": f"b{n:04d}", "ids": ids[n : n + size]})
        for n in range(0, len(ids), size)
    ]
    client.rpush(KEY, *batches)


def _held_by(client: redis.Redis, pid: int) -> dict[str, list[str]]:
    """The IDs still owed by each lease of the worker with this pid: its checkpoints."""
    prefix = f"{socket.gethostname()}:{pid}:"
    held = {}
    for lease, envelope in client.hgetall(f"{{{KEY}}}:held").items():
        if lease.startswith(prefix):
            payload = envelope.split("\n", 2)[2]
            held[lease] = PriceBatch.model_validate_json(payload).ids
    return held


def test_sigkilled_worker_loses_no_task_and_resumes_from_its_checkpoints(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    _push_batches(redis_client, IDS, 100, "crash")
    with SandboxServer(delay_seconds=0.02) as sandbox:
        victim = _worker(tmp_path, "victim", redis_server.url, sandbox.url_template)
        survivor = _worker(tmp_path, "survivor", redis_server.url, sandbox.url_template)
        try:
            _wait_until_stored(victim, tmp_path, "victim", 150)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            owed = _held_by(redis_client, victim.pid)
            assert survivor.wait(120) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
            per_id = sandbox.stats()["per_id"]
        finally:
            for process in (victim, survivor):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    victim_rows = [row["id"] for row in read_jsonl(tmp_path / "victim.jsonl")]
    survivor_rows = [row["id"] for row in read_jsonl(tmp_path / "survivor.jsonl")]
    assert owed, "the victim held no lease when it was killed: the test proves nothing"
    assert set(victim_rows) | set(survivor_rows) == set(IDS)  # nothing lost
    # Nothing the victim had checkpointed is fetched again: only IDs its checkpoints still
    # owed are, and a duplicate row can only be one written after its last checkpoint.
    owed_ids = {id_ for ids in owed.values() for id_ in ids}
    refetched = {id_ for id_, count in per_id.items() if count > 1}
    assert refetched <= owed_ids
    duplicate_rows = set(victim_rows) & set(survivor_rows)
    assert duplicate_rows <= owed_ids
    assert len(victim_rows) == len(set(victim_rows))
    assert len(survivor_rows) == len(set(survivor_rows))
    assert redis_client.llen("hydra:deadletter") == 0
    assert redis_client.llen(KEY) == 0
    assert redis_client.zcard(f"{{{KEY}}}:leases") == 0
    stats = read_summary(tmp_path / "survivor.summary.json")["stats"]
    assert stats["hydra/queue/reclaimed"] == len(owed)
    # the survivor resumed the victim's batches from their checkpoints, not from the start
    assert stats["hydra/prices/ids_redelivered"] == len(owed_ids)
    assert len(owed_ids) < 100 * len(owed)
    assert not (tmp_path / "victim.summary.json").exists()


def test_graceful_shutdown_gives_back_only_what_was_not_fetched(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = IDS[:300]
    _push_batches(redis_client, ids, 20, "stop")
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
        assert redis_client.zcard(f"{{{KEY}}}:leases") == 0  # nothing left leased
        second = _worker(tmp_path, "second", redis_server.url, sandbox.url_template)
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()[-3000:]
        per_id = sandbox.stats()["per_id"]
    rows = [
        row["id"] for name in ("first", "second") for row in read_jsonl(tmp_path / f"{name}.jsonl")
    ]
    assert sorted(rows) == sorted(ids)  # every ID stored exactly once
    assert set(per_id.values()) == {1}  # and fetched exactly once
    # the first stopped midway: the second fetched the rest (batches it gave back from
    # their checkpoints, or never claimed); in-flight batches the first could finish
    # while shutting down are acked, not given back (how many depends on timing)
    assert 40 <= len(read_jsonl(tmp_path / "first.jsonl")) < len(ids)
    assert read_jsonl(tmp_path / "second.jsonl")
    stats = read_summary(tmp_path / "first.summary.json")["stats"]
    assert stats["hydra/queue/checkpoints"] >= 1
