"""Progress lines while a worker runs, and the summary when it closes."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from crawlers.extensions.run_summary import RunSummary
from tests.unit.helpers import price_crawler


def test_progress_lines_say_what_is_done_held_and_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crawler, spider, ledger = price_crawler(
        HYDRA_PROGRESS_INTERVAL_SECONDS=0.05, HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl")
    )
    summary = crawler.get_extension(RunSummary)

    async def scenario() -> None:
        await ledger.spider_opened(spider)
        assert ledger.queue is not None
        await ledger.queue.push(["{}"] * 7)
        summary.spider_opened(spider)
        crawler.stats.set_value("hydra/prices/ids_fetched", 40)
        await asyncio.sleep(0.12)
        crawler.stats.set_value("hydra/prices/ids_fetched", 50)
        await asyncio.sleep(0.06)
        assert summary._progress is not None
        summary._progress.cancel()

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Progress")]
    assert len(lines) >= 2
    assert lines[0].startswith("Progress: 40 IDs done (")
    assert "0 messages held, 7 waiting in the queue" in lines[0]
    assert lines[-1].startswith("Progress: 50 IDs done")


def test_summary_lines_and_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "summary.json"
    crawler, spider, ledger = price_crawler(
        HYDRA_SUMMARY_PATH=str(path), HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl")
    )
    summary = crawler.get_extension(RunSummary)

    async def scenario() -> None:
        await ledger.spider_opened(spider)
        crawler.stats.set_value("hydra/prices/ids_seeded", 5)
        crawler.stats.set_value("hydra/prices/ids_fetched", 5)
        crawler.stats.set_value("hydra/sink/items_stored", 4)
        crawler.stats.set_value("hydra/deadletter/invalid_message", 2)
        await ledger.spider_closed(spider, "finished")
        await summary.spider_closed(spider, "finished")

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    document = json.loads(path.read_text())
    lines = document["summary"]
    assert "IDs asked:         5" in lines
    assert "IDs stored:        4" in lines  # durable rows, not fetched ones
    assert "Dead letters:      2" in lines
    assert f"Dead-letter:       {tmp_path / 'dl.jsonl'}" in lines
    assert sum("Hydra run summary" in r.getMessage() for r in caplog.records) == 1


def test_quiet_log_formatter_builds_no_debug_lines_above_debug() -> None:
    from scrapy import Request

    from crawlers.logformatter import QuietLogFormatter
    from tests.unit.helpers import response_for

    request = Request("http://t/p/1")
    crawler, spider, _ = price_crawler(LOG_LEVEL="INFO")
    quiet = QuietLogFormatter.from_crawler(crawler)
    assert quiet.crawled(request, response_for(request), spider) is None
    assert quiet.scraped({"id": 1}, response_for(request), spider) is None
    crawler, spider, _ = price_crawler(LOG_LEVEL="DEBUG")
    loud = QuietLogFormatter.from_crawler(crawler)
    crawled = loud.crawled(request, response_for(request), spider)
    assert crawled is not None and "Crawled" in crawled["msg"]
