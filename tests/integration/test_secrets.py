"""Credentials stay out of logs, stats and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crawlers.sandbox import SandboxServer
from tests.conftest import run_worker
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

PASSWORD = "Sup3r-s3cret-redis-pw"


def test_redis_password_never_reaches_logs_or_summary(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        client = server.client()
        # a dead-lettered fetch task carrying credentials of its own
        task = {"job_id": "j", "channel_id": "c", "source_type": "ftp", "is_new": True}
        task["config"] = {"host": "ftp.example.com", "password": "ftp-pw-123"}
        client.rpush("hydra:prices:batches", json.dumps(task))
        client.rpush(
            "hydra:prices:batches", json.dumps({"run_id": "r", "batch_id": "b", "ids": ["1"]})
        )
        log = run_worker(
            HYDRA_REDIS_URL=server.url,
            HYDRA_IDLE_CLOSE_SECONDS=0.5,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
            HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
        )
        deadletter = client.lrange("hydra:deadletter", 0, -1)
        client.close()
    finally:
        server.stop()
    summary = (tmp_path / "summary.json").read_text()
    assert "redis://:***@127.0.0.1" in log  # the worker says where it consumes from
    for text in (log, summary):
        assert PASSWORD not in text
        assert "ftp-pw-123" not in text
    (entry,) = [json.loads(e) for e in deadletter]
    assert entry["reason"] == "invalid_message"
    assert "ftp-pw-123" not in entry["payload"]
    assert json.loads(entry["payload"])["config"]["host"] == "ftp.example.com"
