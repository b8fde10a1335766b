"""`scrapy workers prices -p N`: several worker processes on one queue, one file each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from crawlers.commands.workers import per_process_sink
from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, worker_env
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _workers(*args: str) -> list[str]:
    return [sys.executable, "-m", "scrapy", "workers", "prices", *args]


def _push(client: redis.Redis, ids: list[str]) -> None:
    client.rpush(
        "hydra:prices:batches",
        *[json.dumps({"run_id": "w", "batch_id": f"b{n}", "ids": ids[n : n + 10]})
          for n in range(0, len(ids), 10)],
    )  # fmt: skip


def test_two_processes_share_the_queue_each_with_its_own_file(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = [f"id-{n}" for n in range(400)]
    _push(redis_client, ids)
    # Alone, one process needs ~10 s for all of it (2 batches at a time, 50 ms per ID):
    # far longer than the other process can lag behind in starting, even on a slow CI host.
    with SandboxServer(delay_seconds=0.05) as sandbox:
        env = worker_env(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_QUEUE_PREFETCH=2,
            HYDRA_IDLE_CLOSE_SECONDS=1,
            HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
        )
        done = subprocess.run(
            _workers("-p", "2"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        per_id = sandbox.stats()["per_id"]
    assert done.returncode == 0, done.stderr[-3000:]
    files = [tmp_path / "out.p0.jsonl", tmp_path / "out.p1.jsonl"]
    rows = [[row["id"] for row in read_jsonl(path)] for path in files]
    assert all(rows), "each process stored part of the work"
    assert sorted(rows[0] + rows[1]) == sorted(ids)  # together, each ID exactly once
    assert set(per_id.values()) == {1}
    assert not (tmp_path / "out.jsonl").exists()


def test_a_stop_signal_reaches_every_process(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = [f"id-{n}" for n in range(3000)]
    _push(redis_client, ids)
    with SandboxServer(delay_seconds=0.02) as sandbox:
        env = worker_env(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",  # no idle close: runs until stopped
        )
        launcher = subprocess.Popen(
            _workers("-p", "2"), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not all(read_jsonl(tmp_path / f"out.p{n}.jsonl") for n in range(2)):
                assert launcher.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            launcher.send_signal(signal.SIGINT)
            _, log = launcher.communicate(timeout=60)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    assert launcher.returncode == 0, log[-3000:]
    assert log.count("Hydra run summary (shutdown)") == 2  # both shut down gracefully
    assert redis_client.zcard("{hydra:prices:batches}:leases") == 0  # and gave work back


def test_several_processes_need_a_shared_queue(tmp_path: Path) -> None:
    done = subprocess.run(
        _workers("-p", "2"), cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Configuration error: HYDRA_REDIS_URL: several processes need a shared queue" in (
        done.stderr
    )


def test_file_sinks_get_a_file_per_process() -> None:
    assert per_process_sink("jsonl://output/prices.jsonl", 1) == "jsonl://output/prices.p1.jsonl"
    assert per_process_sink("jsonl:///abs/x.jsonl?flush_rows=5", 0) == (
        "jsonl:///abs/x.p0.jsonl?flush_rows=5"
    )
    assert per_process_sink("bigquery://project/dataset.table", 1) == (
        "bigquery://project/dataset.table"
    )
