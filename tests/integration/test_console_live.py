"""What keeps an open console live, against a real SQLite state database: the job feed
(this replica's changes at once, another replica's through the poll, a slow page told to
reload), the log tail (thousands of lines in batches, in order, to the end), the job page's
event stream, and the first items a crawl reports."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi import FastAPI
from scrapy import Spider
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from crawlers.config import HydraConfig
from crawlers.console import live
from crawlers.console.app import mount_console
from crawlers.console.jobs import _job_events
from crawlers.console.live import RELOAD, JobFeed, tail_file
from crawlers.db.state import StateDB
from crawlers.extensions.job_status import JobStatusReporter
from crawlers.models.job_status import MAX_ITEM_BYTES, JobStatusEvent
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.store import SchedulerStore

pytestmark = pytest.mark.integration
T = TypeVar("T")
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    state.upgrade()
    return state


def test_the_feed_delivers_this_replicas_changes_at_once_and_others_by_polling(
    db: StateDB,
) -> None:
    async def scenario() -> None:
        store = SchedulerStore(db)
        feed = JobFeed(db, poll_seconds=30.0)  # a poll this slow: only a poke is quick
        store.listeners.append(feed.poke)
        await store.create_job("before", "t", 0, 50, NOW, NOW)  # not shown: it predates
        async with feed.subscribe() as changes:
            started = time.monotonic()
            await store.create_job("j1", "task-a", 2, 50, NOW, NOW)
            await store.transition("j1", "queued", "waiting for a slot")
            first = await asyncio.wait_for(changes.get(), 5)
            second = await asyncio.wait_for(changes.get(), 5)
            assert time.monotonic() - started < 2.0
            assert (first.job_id, first.task, first.state, first.attempt) == (
                "j1", "task-a", "pending", 2,
            )  # fmt: skip
            assert (second.state, second.reason) == ("queued", "waiting for a slot")
            assert second.seq > first.seq
            other = SchedulerStore(db)  # another replica: no listener of ours
            feed.poll_seconds = 0.2
            feed.poke()  # the reader takes the new poll interval
            await other.create_job("j2", "task-b", 0, 50, NOW, NOW)
            third = await asyncio.wait_for(changes.get(), 5)
            assert (third.job_id, third.state) == ("j2", "pending")
            await asyncio.sleep(0.6)  # polls that re-read the window deliver nothing twice
            assert changes.empty()
        await asyncio.sleep(0.5)  # nobody watches: the reader stops
        for index in range(3):
            await store.create_job(f"unseen-{index}", "t", 0, 50, NOW, NOW)
        async with feed.subscribe() as later:  # a page opened now shows those already
            await store.create_job("j3", "t", 0, 50, NOW, NOW)
            assert (await asyncio.wait_for(later.get(), 5)).job_id == "j3"
        await feed.close()

    _run(scenario())


def test_a_subscriber_that_falls_behind_is_told_to_reload(
    db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "SUBSCRIBER_BACKLOG", 3)

    async def scenario() -> None:
        store = SchedulerStore(db)
        feed = JobFeed(db, poll_seconds=0.1)
        async with feed.subscribe() as slow, feed.subscribe() as fast:
            seen: list[str] = []

            async def keep_up() -> None:
                while len(seen) < 5:
                    seen.append((await fast.get()).job_id)

            reader = asyncio.ensure_future(keep_up())
            for index in range(5):
                await store.create_job(f"j{index}", "t", 0, 50, NOW, NOW)
                await asyncio.sleep(0.15)
            await asyncio.wait_for(reader, 5)
            assert seen == ["j0", "j1", "j2", "j3", "j4"]
            queued = [slow.get_nowait() for _ in range(slow.qsize())]
            assert queued[-1] is RELOAD and len(queued) == 3
        await feed.close()

    _run(scenario())


def test_the_log_tail_keeps_up_with_thousands_of_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_bytes(b"x" * (live.TAIL_START + 10) + b"\nold line\n")
    total = 20_000
    done = threading.Event()

    def writer() -> None:
        with path.open("a") as file:
            for index in range(total):
                file.write(f"line {index} <script>\n")
                if index % 2000 == 0:
                    file.flush()
                    time.sleep(0.05)
        done.set()

    async def finished() -> bool:
        return done.is_set()

    async def scenario() -> list[list[str]]:
        thread = threading.Thread(target=writer)
        thread.start()
        batches = [batch async for batch in tail_file(path, finished, poll_seconds=0.02)]
        thread.join()
        return batches

    batches = _run(scenario())
    lines = [line for batch in batches for line in batch]
    assert lines[0] == "old line"  # the cut first line of the last 64 KiB is skipped
    assert lines[1:] == [f"line {index} <script>" for index in range(total)]
    assert 1 < len(batches) < total / 100  # batches, not a line at a time


def test_a_truncated_log_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_text("first run\n")
    state = {"polls": 0}

    async def finished() -> bool:
        state["polls"] += 1
        if state["polls"] == 2:
            path.write_text("new\n")  # rotated: smaller than what was read
        return state["polls"] > 8

    async def scenario() -> list[str]:
        return [line async for batch in tail_file(path, finished, 0.01) for line in batch]

    assert _run(scenario()) == ["first run", "new"]


def test_a_crawl_reports_its_first_items_redacted_and_capped() -> None:
    crawler = get_crawler(Spider, {"HYDRA_JOB_ID": "job-1"})
    reporter = JobStatusReporter.from_crawler(crawler)
    reporter.item_scraped({"name": "first", "api_token": "tok-123", "url": "https://u:p@h/x"})
    reporter.item_scraped({"api_key": "k-9", "text": "y" * (2 * MAX_ITEM_BYTES)})
    for index in range(10):
        reporter.item_scraped({"name": f"item {index}"})
    items = reporter._items
    assert len(items) == 5
    assert items[0]["api_token"] == "***" and "u:p@" not in items[0]["url"]
    assert list(items[1]) == ["truncated"] and len(json.dumps(items[1])) <= MAX_ITEM_BYTES
    assert "k-9" not in items[1]["truncated"]  # redacted before it was cut
    assert items[4] == {"name": "item 2"}
    event = JobStatusEvent(job_id="job-1", event="progress", at=NOW, items=items)
    assert JobStatusEvent.model_validate_json(event.model_dump_json()).items == items


def test_a_job_pages_stream_carries_its_state_stats_and_log_to_the_end(
    db: StateDB, tmp_path: Path
) -> None:
    config = HydraConfig.from_settings(
        Settings({"HYDRA_DB_URL": str(db.url), "HYDRA_API_KEYS": "k"})
    )
    console = mount_console(FastAPI(), config, Scheduler(config, db))
    store = console.scheduler.store
    log = tmp_path / "job.log"
    log.write_text("starting <b>\n")

    async def scenario() -> list[tuple[str, Any]]:
        await store.create_job("j1", "t", 0, 50, NOW, NOW)
        await store.transition("j1", "queued")
        await store.transition("j1", "running", stats_json={"item_scraped_count": 1})
        await store.annotate("j1", log_ref=str(log))
        events: list[tuple[str, Any]] = []
        stream = _job_events(console, "j1")
        async for text in stream:
            if text.startswith(":"):
                continue
            name, raw = (line.split(": ", 1)[1] for line in text.strip().split("\n"))
            data = json.loads(raw)
            events.append((name, data))
            if name == "log" and data == ["starting <b>"]:
                with log.open("a") as file:
                    file.write("more\n")
                await store.transition("j1", "succeeded", "done")
            if name == "log-end":
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await console.feed.close()
        return events

    events = _run(scenario())
    names = [name for name, _ in events]
    assert names[0] == "ready" and names[-1] == "log-end"
    logged = [line for name, data in events if name == "log" for line in data]
    assert logged == ["starting <b>", "more"]
    states = [data["state"] for name, data in events if name == "state"]
    assert states == ["succeeded"]
    stats = [data for name, data in events if name == "stats"]
    assert dict(stats[0]["stats"]) == {"item_scraped_count": "1"} and stats[0]["items"] == []
