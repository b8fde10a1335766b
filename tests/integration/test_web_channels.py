"""Seed 003's web/API channels end to end, with real Chromium and the sandbox shop:
a new channel gets a generated fetcher (v1, committed and mapped) and later runs
without the browser; the shop changes its API and heal produces, validates and
promotes v2; a site that cannot be healed asks for a person; a 503 is retried."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crawlers.db.state import RetryPolicy, StateDB
from crawlers.sandbox.shop_server import ShopServer
from tests.conftest import read_jsonl, run_worker

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path) -> dict[str, object]:
    return {
        "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
        "HYDRA_STORE_URI": f"file://{tmp_path}/store",
        "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        "HYDRA_FETCHERS_REPO": str(tmp_path / "fetchers-repo"),
    }


def _task(job: str, channel: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "channel_id": channel,
        "source_type": "api",
        "config": {"url": url},
        **extra,
    }


def _run(tmp_path: Path, task: dict[str, Any], **settings: object) -> str:
    path = tmp_path / f"{task['job_id']}.json"
    path.write_text(json.dumps(task))
    return run_worker(
        "-a", f"task=@{path}", spider="web", timeout=240, **{**_settings(tmp_path), **settings}
    )


def _statuses(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        m["message"]["job_id"]: m["message"]
        for m in read_jsonl(tmp_path / "topics" / "hydra_status.jsonl")
    }


def _items(tmp_path: Path, channel: str, job: str) -> list[dict[str, Any]]:
    files = list((tmp_path / "store").rglob(f"{channel}/{job}/items.jsonl"))
    assert len(files) == 1, files
    return read_jsonl(files[0])


def _git_log(tmp_path: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(tmp_path / "fetchers-repo"), "log", "--format=%s"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def _fast_retries(tmp_path: Path, channel: str, heal: int = 2) -> None:
    async def scenario() -> None:
        db = StateDB(f"sqlite:///{tmp_path}/state.db")
        await db.open()
        try:
            await db.set_retry_policy(channel, RetryPolicy(2, heal, 0.2))
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_new_channel_gets_v1_then_runs_it_without_the_browser_and_heals_to_v2(
    tmp_path: Path,
) -> None:
    with ShopServer() as shop:
        _run(tmp_path, _task("j1", "ch1", shop.shop_url, is_new=True))
        first = _statuses(tmp_path)["j1"]
        assert first["status"] == "success", first
        assert first["metadata"]["items"] == 57
        names = {item["name"] for item in _items(tmp_path, "ch1", "j1")}
        assert len(names) == 57
        log = _git_log(tmp_path)
        assert len(log) == 1 and "new channel ch1" in log[0]
        module = next((tmp_path / "fetchers-repo" / "fetchers").glob("*_fetcher_v1.py"))
        assert "Bearer" not in module.read_text() or "TOKEN" in module.read_text()
        # a second channel of the same site, and a second run of the first: no browser
        _fast_retries(tmp_path, "ch1")
        pages_before = shop.stats()["per_path"].get("/shop/", 0)
        _run(tmp_path, _task("j2", "ch1", shop.shop_url))
        _run(tmp_path, _task("j3", "ch2", shop.shop_url, is_new=True))
        statuses = _statuses(tmp_path)
        assert statuses["j2"]["status"] == statuses["j3"]["status"] == "success"
        assert statuses["j2"]["metadata"]["items"] == statuses["j3"]["metadata"]["items"] == 57
        assert shop.stats()["per_path"].get("/shop/", 0) == pages_before  # the page was not opened
        assert len(_git_log(tmp_path)) == 1  # ch2 reuses v1
        # the shop moves to its v2 API: v1 breaks, a heal task follows in the same crawl
        shop.set_api_version(2)
        _run(tmp_path, _task("j4", "ch1", shop.shop_url))
        statuses = _statuses(tmp_path)
        assert statuses["j4"]["status"] == "failed"
        assert "website changed" in statuses["j4"]["message"]
        healed = statuses["j4-heal"]
        assert healed["status"] == "success", healed
        assert healed["metadata"]["items"] == 57
        log = _git_log(tmp_path)
        assert len(log) == 2 and "heal of v1" in log[0]
        assert sorted(p.name for p in (tmp_path / "fetchers-repo" / "fetchers").glob("*.py"))[
            -1
        ].endswith("_v2.py")
        # the other channel of v1 was moved too, and runs v2
        _run(tmp_path, _task("j5", "ch2", shop.shop_url))
        later = _statuses(tmp_path)["j5"]
        assert later["status"] == "success" and later["metadata"]["fetcher"].endswith("_v2")
