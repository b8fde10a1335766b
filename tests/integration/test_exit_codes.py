"""`scrapy crawl prices` says what went wrong and exits accordingly.

0: the run did its work. 1: the run failed (nothing succeeded, the queue
never came up). 2: the settings are unusable, one line per problem, no
traceback. A worker waits for a queue server that is away, and recovers
when it comes up.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, read_summary, scrapy_command, worker_env
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.integration

QUEUE = "hydra:prices:batches"
WAITING = "Waiting for the queue"


def crawl(*args: str, timeout: float = 60, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        scrapy_command(*args),
        cwd=ROOT,
        env=worker_env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(log: str, chars: int = 3000) -> str:
    return "\n--- worker log (tail) ---\n" + log[-chars:]


def _outputs(tmp_path: Path) -> dict[str, Any]:
    return {
        "HYDRA_SINKS": f"jsonl://{tmp_path}/out.jsonl",
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        "HYDRA_SUMMARY_PATH": str(tmp_path / "summary.json"),
    }


class Worker:
    """A worker running in the background, its log in a file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.process.poll() is not None:
                pytest.fail(
                    f"worker exited ({self.process.returncode}) before {text!r}" + _tail(self.log)
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the log within {timeout} s" + _tail(self.log))
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running after {timeout} s" + _tail(self.log))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def background_worker(log_path: Path, *args: str, **settings: object) -> Iterator[Worker]:
    with log_path.open("wb") as log_file:
        stderr: IO[bytes] = log_file
        process = subprocess.Popen(
            scrapy_command(*args),
            cwd=ROOT,
            env=worker_env(**settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        worker = Worker(process, log_path)
        try:
            yield worker
        finally:
            worker.stop()


# -- configuration errors: exit 2 --------------------------------------------------------


def _config_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Configuration error:")]


def test_bad_settings_exit_2_with_one_line_per_problem(tmp_path: Path) -> None:
    result = crawl(HYDRA_QUEUE_PREFETCH=0, HYDRA_RETRY_DELAY_SECONDS="abc", **_outputs(tmp_path))
    assert result.returncode == 2, _tail(result.stderr)
    lines = _config_lines(result.stderr)
    assert len(lines) == 2, lines
    assert lines[0].startswith("Configuration error: HYDRA_QUEUE_PREFETCH='0': ")
    assert lines[1].startswith("Configuration error: HYDRA_RETRY_DELAY_SECONDS='abc': ")
    assert "Traceback" not in result.stderr, _tail(result.stderr)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HYDRA_QUEUE_PREFETCH", "-3"),
        ("HYDRA_BATCH_OK_STATUSES", "[200,"),
        ("HYDRA_IDLE_CLOSE_SECONDS", "nan"),
        ("HYDRA_SINKS", "ftp://elsewhere/out.jsonl"),
        ("HYDRA_REDIS_URL", "http://127.0.0.1:6379/0"),
    ],
)
def test_each_bad_setting_is_named(tmp_path: Path, name: str, value: str) -> None:
    result = crawl(**{**_outputs(tmp_path), name: value})
    assert result.returncode == 2, _tail(result.stderr)
    (line,) = _config_lines(result.stderr)
    assert line.startswith(f"Configuration error: {name}"), line
    assert "Traceback" not in result.stderr, _tail(result.stderr)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HYDRA_QUEUE_LEASE_SECONDS", "inf"),
        ("HYDRA_REDIS_URL", "redis://127.0.0.1:notaport/0"),
    ],
)
def test_unusable_setting_is_a_configuration_error(tmp_path: Path, name: str, value: str) -> None:
    # should a worker start anyway, it gives up on its queue after a second
    settings = {"HYDRA_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", name: value}
    result = crawl(HYDRA_IDLE_CLOSE_SECONDS=1, **_outputs(tmp_path), **settings)
    assert "Traceback" not in result.stderr, _tail(result.stderr)
    assert result.returncode == 2, _tail(result.stderr)
    (line,) = _config_lines(result.stderr)
    assert line.startswith(f"Configuration error: {name}"), line


def test_misspelt_variable_warns_with_a_suggestion_and_the_run_works(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    result = crawl(
        "-a", "ids=m1,m2", "-a", f"url_template={sandbox.url_template}",
        HYDRA_QUEUE_PREFTCH=3, **_outputs(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, _tail(result.stderr)
    (warning,) = [line for line in result.stderr.splitlines() if "HYDRA_QUEUE_PREFTCH" in line]
    assert " WARNING: " in warning
    assert "did you mean HYDRA_QUEUE_PREFETCH?" in warning
    assert sorted(row["id"] for row in read_jsonl(tmp_path / "out.jsonl")) == ["m1", "m2"]


# -- failed runs: exit 1 ---------------------------------------------------------------


def test_every_request_failing_exits_1(tmp_path: Path) -> None:
    ids = ["f1", "f2", "f3"]
    with SandboxServer(fail_ids=frozenset(ids)) as sandbox:
        result = crawl(
            "-a", "ids=" + ",".join(ids), "-a", f"url_template={sandbox.url_template}",
            HYDRA_BATCH_MAX_ATTEMPTS=2, HYDRA_RETRY_DELAY_SECONDS=0, **_outputs(tmp_path),
        )  # fmt: skip
        per_id = sandbox.stats()["per_id"]
    assert result.returncode == 1, _tail(result.stderr)
    warnings = [line for line in result.stderr.splitlines() if "Nothing succeeded" in line]
    assert len(warnings) == 1 and " WARNING: " in warnings[0], _tail(result.stderr)
    assert "Traceback" not in result.stderr, _tail(result.stderr)
    assert per_id == {"f1": 2}  # the batch stops at its first failure, twice
    (entry,) = read_jsonl(tmp_path / "dl.jsonl")
    assert entry["reason"] == "max_attempts"
    assert json.loads(entry["payload"])["ids"] == ids
    assert read_summary(tmp_path / "summary.json")["stats"]["hydra/worker/failed"] == (
        "nothing_succeeded"
    )


def test_unreachable_redis_exits_1_after_the_idle_time(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = crawl(
        HYDRA_REDIS_URL=url, HYDRA_IDLE_CLOSE_SECONDS=2, timeout=60, **_outputs(tmp_path)
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, _tail(result.stderr)
    assert elapsed < 30, f"took {elapsed:.0f} s" + _tail(result.stderr)
    (waiting,) = [line for line in result.stderr.splitlines() if WAITING in line]
    assert url in waiting and "giving up after 2 s idle" in waiting, waiting
    assert "queue_unreachable" in result.stderr
    assert "Traceback" not in result.stderr, _tail(result.stderr)


def test_unreachable_redis_without_idle_close_keeps_waiting(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with background_worker(
        tmp_path / "worker.log",
        HYDRA_REDIS_URL=url,
        HYDRA_IDLE_CLOSE_SECONDS=0,
        HYDRA_QUEUE_POLL_MAX_SECONDS=0.5,
        **_outputs(tmp_path),
    ) as worker:
        worker.wait_for_log(WAITING, timeout=30)
        time.sleep(4)
        assert worker.process.poll() is None, "the worker gave up" + _tail(worker.log)
        log = worker.log
    # still waiting, and saying so without flooding the log (it retried ~8 times)
    assert log.count(WAITING) == 1, _tail(log)
    assert "giving up" not in log
    assert "Traceback" not in log, _tail(log)


def test_worker_started_before_redis_recovers_when_it_comes_up(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.port = free_port()
    ids = ["r1", "r2", "r3", "r4"]
    with (
        SandboxServer() as sandbox,
        background_worker(
            tmp_path / "worker.log",
            HYDRA_REDIS_URL=server.url,
            HYDRA_IDLE_CLOSE_SECONDS=4,
            HYDRA_QUEUE_POLL_MAX_SECONDS=0.5,
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            **_outputs(tmp_path),
        ) as worker,
    ):
        worker.wait_for_log(WAITING, timeout=30)
        server.start()
        try:
            client: redis.Redis = server.client()
            batch = {"run_id": "late", "batch_id": "b1", "ids": ids}
            client.rpush(QUEUE, json.dumps(batch))
            status = worker.wait(60)
            leftovers = {
                key: int(client.llen(key) if "leases" not in key else client.zcard(key))
                for key in (QUEUE, f"{{{QUEUE}}}:ready", f"{{{QUEUE}}}:leases")
            }
            client.close()
        finally:
            server.stop()
        per_id = sandbox.stats()["per_id"]
        log = worker.log
    assert status == 0, _tail(log)
    assert "The queue is reachable again" in log, _tail(log)
    assert sorted(row["id"] for row in read_jsonl(tmp_path / "out.jsonl")) == ids
    assert per_id == dict.fromkeys(ids, 1)
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats.get("hydra/queue/reclaimed", 0) == 0  # never its own leases
    assert stats["hydra/queue/acked"] == 1
    assert set(leftovers.values()) == {0}, leftovers


# -- success: exit 0 ---------------------------------------------------------------------


def test_embedded_success_exits_0(tmp_path: Path, sandbox: SandboxServer) -> None:
    result = crawl(
        "-a", "ids=e1,e2,e3", "-a", f"url_template={sandbox.url_template}",
        **_outputs(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, _tail(result.stderr)
    assert sorted(row["id"] for row in read_jsonl(tmp_path / "out.jsonl")) == ["e1", "e2", "e3"]
    assert "Nothing succeeded" not in result.stderr
    assert "Traceback" not in result.stderr, _tail(result.stderr)
    assert "FAILED" not in read_summary(tmp_path / "summary.json")["summary"][-1]
