"""The JobStatusReporter: only in scheduled crawls; running, heartbeats, the end with
final stats; a failing stream never breaks the crawl."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig
from crawlers.extensions.job_status import JobStatusReporter, plain_stats
from crawlers.models.job_status import JobStatusEvent
from tests.unit.helpers import price_crawler


class FailingTopics:
    async def open(self) -> None:
        return None

    async def publish(self, topic: str, message: str, idempotency_key: str) -> None:
        raise ConnectionError("stream down")

    async def close(self) -> None:
        return None

    def describe(self, topic: str) -> str:
        return topic


def test_only_a_crawl_the_scheduler_started_reports(tmp_path: Path) -> None:
    crawler, _spider, _ledger = price_crawler(HYDRA_TOPICS_PATH=str(tmp_path))
    assert crawler.get_extension(JobStatusReporter) is None
    with pytest.raises(NotConfigured, match="HYDRA_JOB_ID"):
        JobStatusReporter.from_crawler(crawler)


def test_running_heartbeats_and_the_end_with_final_stats(tmp_path: Path) -> None:
    crawler, spider, _ledger = price_crawler(
        HYDRA_JOB_ID="job-7", HYDRA_TOPICS_PATH=str(tmp_path), HYDRA_JOB_HEARTBEAT_SECONDS=0.05
    )
    reporter = JobStatusReporter.from_crawler(crawler)

    async def scenario() -> None:
        await reporter.spider_opened(spider)
        assert crawler.stats is not None
        crawler.stats.set_value("item_scraped_count", 4)
        await asyncio.sleep(0.13)
        crawler.stats.set_value("item_scraped_count", 9)
        await reporter.spider_closed(spider, "finished")

    asyncio.run(scenario())
    lines = (tmp_path / "hydra_jobs_status.jsonl").read_text().splitlines()
    events = [JobStatusEvent.model_validate(json.loads(line)["message"]) for line in lines]
    assert {event.job_id for event in events} == {"job-7"}
    kinds = [event.event for event in events]
    assert kinds[0] == "running" and kinds[-1] == "finished"
    assert 2 <= kinds.count("progress") <= 3  # every 50 ms for 130 ms
    assert events[1].stats["item_scraped_count"] == 4
    assert events[-1].stats["item_scraped_count"] == 9 and events[-1].finish_reason == "finished"
    assert reporter._beat is not None and reporter._beat.done()  # no heartbeat after the end


def test_a_failing_stream_is_logged_and_the_crawl_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crawler, spider, _ledger = price_crawler(HYDRA_JOB_ID="job-8", HYDRA_TOPICS_PATH=str(tmp_path))
    reporter = JobStatusReporter(crawler, HydraConfig.from_crawler(crawler), FailingTopics())

    async def scenario() -> None:
        await reporter.spider_opened(spider)
        await reporter.spider_closed(spider, "finished")

    asyncio.run(scenario())
    assert "Job status finished not published: ConnectionError" in caplog.text
    assert crawler.stats is not None and crawler.stats.get_value("hydra/job_status/running") is None


def test_plain_stats_are_json_scalars() -> None:
    when = datetime(2026, 11, 30, tzinfo=UTC)
    stats = plain_stats({"start_time": when, "n": 3, "ok": True, "obj": object()})
    assert stats["start_time"] == when.isoformat() and stats["n"] == 3 and stats["ok"] is True
    assert isinstance(stats["obj"], str)
    json.dumps(stats)
