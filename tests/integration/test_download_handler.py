"""The price path's download handler (aiohttp) does what the worker needs of HTTP:
TLS, timeouts, proxies, the status and body of every answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crawlers.sandbox import SandboxServer
from tests.conftest import read_jsonl, read_summary, run_worker

pytestmark = pytest.mark.integration


def _outputs(tmp_path: Path) -> dict[str, object]:
    return {
        "HYDRA_SINKS": f"jsonl://{tmp_path}/out.jsonl",
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        "HYDRA_SUMMARY_PATH": str(tmp_path / "summary.json"),
    }


def test_https_targets(tmp_path: Path) -> None:
    with SandboxServer(tls=True) as sandbox:
        assert sandbox.url_template.startswith("https://")
        run_worker(
            "-a", "ids=a,b,c", "-a", f"url_template={sandbox.url_template}", **_outputs(tmp_path)
        )  # fmt: skip
        assert sandbox.stats()["per_id"] == {"a": 1, "b": 1, "c": 1}
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == ["a", "b", "c"]
    assert all(row["data"]["currency"] == "USD" for row in rows)


def test_a_slow_answer_times_out_and_stops_the_batch(tmp_path: Path) -> None:
    with SandboxServer(delay_seconds=3) as sandbox:
        run_worker(
            "-a", "ids=slow", "-a", f"url_template={sandbox.url_template}",
            "-s", "DOWNLOAD_TIMEOUT=0.5", expect_exit=1,
            HYDRA_BATCH_MAX_ATTEMPTS=1, **_outputs(tmp_path),
        )  # fmt: skip
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/stopped/download_error/DownloadTimeoutError"] == 1
    (entry,) = read_jsonl(tmp_path / "dl.jsonl")
    assert entry["reason"] == "max_attempts" and "took longer than 0.5" in entry["error"]


def test_requests_go_through_the_configured_proxy(tmp_path: Path) -> None:
    """The target's host does not resolve: only a proxy can reach it. The sandbox is
    that proxy (it answers absolute-form requests), as a region's egress would be."""
    with SandboxServer() as proxy:
        run_worker(
            "-a", "ids=p1,p2", "-a", "url_template=http://price-api.invalid/price/{id}",
            **_outputs(tmp_path), http_proxy=proxy.base_url,
        )  # fmt: skip
        per_id = proxy.stats()["per_id"]
    assert per_id == {"p1": 1, "p2": 1}
    assert sorted(row["id"] for row in read_jsonl(tmp_path / "out.jsonl")) == ["p1", "p2"]


def test_statuses_and_bodies_reach_the_batch_rules(tmp_path: Path) -> None:
    with SandboxServer(fail_ids=frozenset({"b"})) as sandbox:
        run_worker(
            "-a", "ids=a,b", "-a", f"url_template={sandbox.url_template}",
            HYDRA_BATCH_MAX_ATTEMPTS=1, **_outputs(tmp_path),
        )  # fmt: skip
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["id"] == "a" and isinstance(row["data"]["price"], float)
    (entry,) = read_jsonl(tmp_path / "dl.jsonl")
    assert "HTTP 503 for id b" in entry["error"]
    assert json.loads(entry["payload"])["ids"] == ["b"]
