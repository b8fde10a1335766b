"""Fixtures: real servers on free loopback ports, and helpers to run real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

#: real servers for the fetch tasks: PostgreSQL, FTP, moto's S3
pytest_plugins = ["tests.dbfixtures", "tests.ftpfixtures", "tests.s3fixtures", "tests.bqfixtures"]
pytest_plugins += ["tests.clickhousefixtures"]  # ClickHouse (clickhouse_server)


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the caller's HYDRA_* settings (an exported HYDRA_REDIS_URL
    would otherwise turn embedded tests into distributed ones)."""
    for name in list(os.environ):
        if name.startswith("HYDRA_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def sandbox() -> Iterator[Any]:
    from crawlers.sandbox import SandboxServer

    with SandboxServer() as server:
        yield server


def worker_env(**settings: object) -> dict[str, str]:
    """Environment for a `scrapy crawl` subprocess: HYDRA_* settings as variables."""
    # neither the caller's Hydra settings nor its proxies (a worker would send the
    # sandbox's requests through them)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HYDRA_") and not k.lower().endswith("_proxy")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update({name: str(value) for name, value in settings.items()})
    return env


def scrapy_command(*args: str, spider: str = "prices") -> list[str]:
    return [sys.executable, "-m", "scrapy", "crawl", spider, *args]


def run_worker(
    *args: str,
    timeout: float = 120,
    expect_exit: int = 0,
    spider: str = "prices",
    **settings: object,
) -> str:
    """Run one worker to completion; return its log (stderr). Fails on another exit status."""
    process = subprocess.run(
        scrapy_command(*args, spider=spider),
        cwd=ROOT,
        env=worker_env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert process.returncode == expect_exit, process.stderr[-4000:]
    return process.stderr


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (killed writer) is skipped."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines) - 1 and lines[number + 1 :] != [""]:
                raise
    return rows


def read_summary(path: Path) -> dict[str, Any]:
    """The JSON a worker writes to HYDRA_SUMMARY_PATH when it closes."""
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary
