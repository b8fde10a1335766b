"""Seed 003's S3 and FTP fetch jobs, end to end with real servers: moto's S3 server, a
pyftpdlib FTP server, Redis, SQLite and PostgreSQL. Files are deduplicated by content
against the channel's history, stored by job, recorded, and announced on the topics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from crawlers.db.state import RetryPolicy, StateDB
from tests.conftest import ROOT, read_jsonl, run_worker, scrapy_command, worker_env
from tests.ftpfixtures import FtpServer
from tests.s3fixtures import s3_client
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

SCHEMAS = ROOT / "docs" / "schemas"
FILES = {
    "feed/a.csv": b"id,price\n1,2.5\n",
    "feed/sub/b.csv": b"id,price\n2,3.5\n",
    "feed/c.csv": b"id,price\n3,4.5\n",
    "feed/notes.txt": b"not matching *.csv\n",
}


def _embedded(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
        "HYDRA_STORE_URI": f"file://{tmp_path}/store",
        "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        **extra,
    }


def _ftp_task(server: FtpServer, job: str, **config: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "channel_id": "ch_ftp",
        "source_type": "ftp",
        "config": {
            "host": server.host, "port": server.port, "username": server.user,
            "password": server.password, "remote_path": "/feed", "file_pattern": "*.csv",
            **config,
        },
    }  # fmt: skip


def _run_task(tmp_path: Path, spider: str, task: dict[str, Any], **settings: object) -> str:
    path = tmp_path / f"{task['job_id']}.json"
    path.write_text(json.dumps(task))
    return run_worker("-a", f"task=@{path}", spider=spider, **_embedded(tmp_path, **settings))


def _topic(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [line["message"] for line in read_jsonl(tmp_path / "topics" / f"{name}.jsonl")]


def _state(tmp_path: Path, call: Any) -> Any:
    """Run ``call(db)`` on the worker's SQLite state database."""

    async def scenario() -> Any:
        db = StateDB(f"sqlite:///{tmp_path}/state.db")
        await db.open()
        try:
            return await call(db)
        finally:
            await db.close()

    return asyncio.run(scenario())


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_ftp_channel_dedups_across_jobs(tmp_path: Path, ftp_server: FtpServer) -> None:
    _write_tree(ftp_server.home, FILES)
    log = _run_task(tmp_path, "ftp", _ftp_task(ftp_server, "job_1"))
    store = tmp_path / "store" / "ch_ftp"
    stored = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert stored == ["job_1/a.csv", "job_1/c.csv", "job_1/sub/b.csv"]  # only *.csv
    assert (store / "job_1/sub/b.csv").read_bytes() == FILES["feed/sub/b.csv"]
    _run_task(tmp_path, "ftp", _ftp_task(ftp_server, "job_2"))
    assert not (store / "job_2").exists()  # nothing changed: nothing stored
    (ftp_server.home / "feed/c.csv").write_bytes(b"id,price\n3,9.9\n")
    _run_task(tmp_path, "ftp", _ftp_task(ftp_server, "job_3"))
    assert sorted(p.name for p in (store / "job_3").rglob("*") if p.is_file()) == ["c.csv"]
    parsers, statuses = _topic(tmp_path, "hydra_parsers"), _topic(tmp_path, "hydra_status")
    assert [(m["job_id"], m["file_count"]) for m in parsers] == [
        ("job_1", 3), ("job_2", 0), ("job_3", 1),
    ]  # fmt: skip
    assert parsers[0]["s3_output_path"] == f"file://{store}/job_1/"
    assert [(m["status"], m["metadata"]["files_processed"]) for m in statuses] == [
        ("success", 3), ("success", 3), ("success", 3),
    ]  # fmt: skip
    for message in parsers:
        jsonschema.validate(
            message, json.loads((SCHEMAS / "parsers_message.schema.json").read_text())
        )
    for message in statuses:
        jsonschema.validate(
            message, json.loads((SCHEMAS / "status_message.schema.json").read_text())
        )
    rows = _state(tmp_path, lambda db: db.files_of("job_3"))
    assert [(row.file_path, row.content_hash) for row in rows] == [
        ("c.csv", hashlib.sha256(b"id,price\n3,9.9\n").hexdigest())
    ]
    assert ftp_server.password not in log


class FlakyListing:
    """The first listing answers 421 (service not available): a transient failure."""

    failures = 1

    def ftp_MLSD(self, path: str) -> Any:
        if FlakyListing.failures:
            FlakyListing.failures -= 1
            self.respond("421 Service not available, try again")
            return None
        return super().ftp_MLSD(path)  # type: ignore[misc]


def test_a_transient_failure_is_retried_then_succeeds(
    tmp_path: Path, ftp_server_factory: Any
) -> None:
    from pyftpdlib.handlers import FTPHandler

    handler = type("Flaky", (FlakyListing, FTPHandler), {})
    server = ftp_server_factory(handler=handler)
    _write_tree(server.home, FILES)
    policy = RetryPolicy(max_simple_retries=3, max_heal_retries=2, retry_delay_seconds=0.2)
    _state(tmp_path, lambda db: db.set_retry_policy("ch_ftp", policy))
    _run_task(tmp_path, "ftp", _ftp_task(server, "job_flaky"))
    (status,) = _topic(tmp_path, "hydra_status")
    assert status["status"] == "success" and status["metadata"]["source_retries"] == 1


def test_bad_credentials_fail_at_once_with_a_reason(tmp_path: Path, ftp_server: FtpServer) -> None:
    _write_tree(ftp_server.home, FILES)
    task = _ftp_task(ftp_server, "job_badpw", password="wrong-Pa55word-123")
    log = _run_task(tmp_path, "ftp", task)
    (status,) = _topic(tmp_path, "hydra_status")
    assert status["status"] == "failed" and "530 authentication failed" in status["message"].lower()
    assert status["metadata"]["source_retries"] == 0  # not retried
    assert _topic(tmp_path, "hydra_parsers") == []
    everything = log + json.dumps(status) + (tmp_path / "state.db").read_bytes().decode("latin-1")
    assert "wrong-Pa55word-123" not in everything


def test_s3_to_s3_through_redis_routing_and_postgres(
    tmp_path: Path,
    moto_s3: str,
    postgres_url: str,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    ftp_server: FtpServer,
) -> None:
    """Both kinds of task on one list; `scrapy crawl s3` takes the S3 one and routes the
    FTP one to its own queue, where `scrapy crawl ftp` finds it."""
    client = s3_client(moto_s3)
    client.create_bucket(Bucket="source-bucket")
    client.create_bucket(Bucket="hydra-store")
    for name, data in FILES.items():
        client.put_object(Bucket="source-bucket", Key=f"data/{name}", Body=data)
    client.put_object(Bucket="source-bucket", Key="data/feed/../escape.csv", Body=b"x")
    _write_tree(ftp_server.home, FILES)
    s3_task = {
        "job_id": "job_s3", "channel_id": "ch_s3", "source_type": "s3",
        "config": {"bucket": "source-bucket", "remote_path": "/data/feed/",
                   "access_key": "AKIAEXAMPLEKEY000001", "secret_access_key": "s3cret-key-value",
                   "file_pattern": "*.csv", "endpoint_url": moto_s3},
    }  # fmt: skip
    redis_client.rpush(
        "hydra:fetch:tasks", json.dumps(_ftp_task(ftp_server, "job_ftp")), json.dumps(s3_task)
    )
    settings: dict[str, object] = {
        "HYDRA_REDIS_URL": redis_server.url,
        "HYDRA_IDLE_CLOSE_SECONDS": 0.5,
        "HYDRA_DB_URL": postgres_url,
        "HYDRA_STORE_URI": "s3://hydra-store/fetched",
        "HYDRA_S3_ENDPOINT_URL": moto_s3,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3_log = run_worker(spider="s3", **settings)
    assert redis_client.llen("{hydra:fetch:tasks}:ready:ftp") == 1  # routed, waiting
    ftp_log = run_worker(spider="ftp", **settings)
    keys = sorted(
        item["Key"] for item in client.list_objects_v2(Bucket="hydra-store").get("Contents", [])
    )
    assert keys == [
        "fetched/ch_ftp/job_ftp/a.csv", "fetched/ch_ftp/job_ftp/c.csv",
        "fetched/ch_ftp/job_ftp/sub/b.csv", "fetched/ch_s3/job_s3/a.csv",
        "fetched/ch_s3/job_s3/c.csv", "fetched/ch_s3/job_s3/sub/b.csv",
    ]  # fmt: skip
    statuses = {
        json.loads(fields["message"])["job_id"]: json.loads(fields["message"])
        for _, fields in redis_client.xrange("hydra:status")
    }
    assert statuses["job_s3"]["status"] == "success"
    (refused,) = statuses["job_s3"]["metadata"]["files_refused"]
    assert "../escape.csv" in refused and "unsafe name" in refused
    parsers = [json.loads(f["message"]) for _, f in redis_client.xrange("hydra:parsers")]
    assert {m["s3_output_path"] for m in parsers} == {
        "s3://hydra-store/fetched/ch_s3/job_s3/", "s3://hydra-store/fetched/ch_ftp/job_ftp/",
    }  # fmt: skip
    for text in (s3_log, ftp_log, json.dumps(statuses), json.dumps(parsers)):
        assert "s3cret-key-value" not in text and ftp_server.password not in text
    assert redis_client.zcard("{hydra:fetch:tasks}:leases") == 0


class SlowDownloads:
    """Each RETR waits a little, so a job of 60 files takes a few seconds."""

    def ftp_RETR(self, file: str) -> Any:
        time.sleep(0.05)
        return super().ftp_RETR(file)  # type: ignore[misc]


def test_a_job_killed_midway_is_finished_by_another_worker_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, ftp_server_factory: Any
) -> None:
    from pyftpdlib.handlers import FTPHandler

    ftp_server = ftp_server_factory(handler=type("Slow", (SlowDownloads, FTPHandler), {}))
    files = {f"feed/f{n:03d}.csv": f"id,price\n{n},1\n".encode() for n in range(60)}
    _write_tree(ftp_server.home, files)
    redis_client.rpush("hydra:fetch:tasks", json.dumps(_ftp_task(ftp_server, "job_kill")))
    settings = _embedded(
        tmp_path,
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_QUEUE_LEASE_SECONDS=2,
        HYDRA_IDLE_CLOSE_SECONDS=1,
    )
    victim = subprocess.Popen(
        scrapy_command(spider="ftp"), cwd=ROOT,
        env=worker_env(**settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        store = tmp_path / "store" / "ch_ftp" / "job_kill"
        deadline = time.monotonic() + 60
        while len(list(store.glob("*.csv"))) < 5:
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    # the survivor waits past the victim's lease (2 s) before it may idle out
    run_worker(spider="ftp", **{**settings, "HYDRA_IDLE_CLOSE_SECONDS": 5})
    rows = _state(tmp_path, lambda db: db.files_of("job_kill"))
    assert sorted(row.file_path for row in rows) == sorted(n.split("/", 1)[1] for n in files)
    assert len({row.file_path for row in rows}) == len(rows)  # no duplicate rows
    # one status: the victim never got there (with Redis, topics are streams)
    (status,) = [json.loads(f["message"]) for _, f in redis_client.xrange("hydra:status")]
    assert status["status"] == "success" and status["metadata"]["files_processed"] == 60
    (parsers,) = [json.loads(f["message"]) for _, f in redis_client.xrange("hydra:parsers")]
    assert parsers["file_count"] == 60


def test_invalid_tasks_are_dead_lettered_with_credentials_masked(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    bad = {"job_id": "j", "channel_id": "c", "source_type": "ftp",
           "config": {"host": "", "password": "ftp-Secret-77"}}  # fmt: skip
    redis_client.rpush("hydra:fetch:tasks", json.dumps(bad), "{not json")
    log = run_worker(
        spider="fetch", expect_exit=1,  # nothing reported
        **_embedded(tmp_path, HYDRA_REDIS_URL=redis_server.url, HYDRA_IDLE_CLOSE_SECONDS=0.5),
    )  # fmt: skip
    entries = [json.loads(e) for e in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert sorted(e["reason"] for e in entries) == ["invalid_message", "invalid_message"]
    (masked,) = [e for e in entries if e["payload"].startswith('{"job_id"')]
    assert "host" in masked["error"]
    assert masked["payload_redacted"] and "ftp-Secret-77" not in json.dumps(entries) + log
