"""The task machinery serves a kind it was not written for: many parallel pages per job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from crawlers.sandbox import SandboxServer
from tests.conftest import read_jsonl, read_summary, run_worker
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

KEY = "hydra:test:pages"


def _job(job_id: str, sandbox: SandboxServer, ids: list[str]) -> str:
    return json.dumps({"job_id": job_id, "base_url": sandbox.base_url + "/price/", "ids": ids})


def _run(tmp_path: Path, redis_server: RedisServer, expect_exit: int = 0) -> str:
    return run_worker(
        "-s",
        "SPIDER_MODULES=tests.spiders",
        spider="pages",
        expect_exit=expect_exit,
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_TASK_KINDS=json.dumps({"sandbox_pages": "tests.spiders.pages.PagesKind"}),
        HYDRA_IDLE_CLOSE_SECONDS=0.5,
        HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
        HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
    )


def test_a_multi_page_kind_is_acked_once_every_page_is_stored(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with SandboxServer(delay_seconds=0.01) as sandbox:
        jobs = {f"j{n}": [f"{n}-{page}" for page in range(8)] for n in range(3)}
        redis_client.rpush(KEY, *[_job(job, sandbox, ids) for job, ids in jobs.items()])
        _run(tmp_path, redis_server)
        per_id = sandbox.stats()["per_id"]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted((row["job_id"], row["id"]) for row in rows) == sorted(
        (job, id_) for job, ids in jobs.items() for id_ in ids
    )
    assert set(per_id.values()) == {1}
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/queue/acked"] == 3
    assert redis_client.zcard(f"{{{KEY}}}:leases") == 0 and redis_client.llen(KEY) == 0


def test_a_failing_page_fails_its_job_only(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with SandboxServer(fail_ids=frozenset({"bad-3"})) as sandbox:
        good = [f"good-{page}" for page in range(6)]
        bad = [f"bad-{page}" for page in range(6)]
        redis_client.rpush(KEY, _job("good", sandbox, good), _job("bad", sandbox, bad))
        _run(tmp_path, redis_server)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows if row["job_id"] == "good") == sorted(good)
    (entry,) = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert (entry["reason"], entry["kind"]) == ("task_failed", "sandbox_pages")
    assert "http_503" in entry["error"]
    assert json.loads(entry["payload"])["job_id"] == "bad"
    assert redis_client.zcard(f"{{{KEY}}}:leases") == 0
