"""A scheduled crawl reports to the scheduler: running, progress (the heartbeat), the end.

Enabled only in crawls the scheduler started (``HYDRA_JOB_ID`` is set, in the
environment of a local job or as a Scrapyd job setting). Events go to
``HYDRA_JOB_STATUS_STREAM``: a Redis Stream on ``HYDRA_JOB_STATUS_URL`` (the
scheduler's Redis, which need not be the job's own), else through the job's
topics backend (``HYDRA_REDIS_URL``, or the JSON-lines file the embedded
scheduler reads). A crawl
that is killed stops reporting; the scheduler notices the missing heartbeat.
A failing publication is logged and never stops the crawl: the scheduler falls
back on the heartbeat timeout and, for local jobs, the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy import Spider, signals
from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig
from crawlers.models.job_status import (
    MAX_ITEM_BYTES,
    MAX_ITEMS,
    MAX_STATS,
    JobEvent,
    JobStatusEvent,
    StatValue,
)
from crawlers.topics import Topics, build_topics

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


def plain_stats(stats: dict[str, Any]) -> dict[str, StatValue]:
    """Scrapy stats as JSON scalars (datetimes as ISO text), at most ``MAX_STATS`` keys."""
    plain: dict[str, StatValue] = {}
    for key, value in sorted(stats.items())[:MAX_STATS]:
        if isinstance(value, datetime):
            plain[key[:200]] = value.isoformat()
        elif isinstance(value, bool | int | float | str):
            plain[key[:200]] = value if not isinstance(value, str) else value[:1000]
        else:
            plain[key[:200]] = str(value)[:1000]
    return plain


class JobStatusReporter:
    def __init__(self, crawler: Crawler, config: HydraConfig, topics: Topics) -> None:
        self.crawler = crawler
        self.config = config
        self.topics = topics
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._beat: asyncio.Task[None] | None = None
        self._opened = False
        self._sequence = 0
        self._items: list[dict[str, Any]] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JobStatusReporter:
        config = HydraConfig.from_crawler(crawler)
        if not config.job_id:
            raise NotConfigured("not a scheduled job: the scheduler sets HYDRA_JOB_ID to enable")
        topics: Topics
        if config.job_status_url:  # the scheduler's Redis, whatever the job's own mode
            from crawlers.topics.streams import RedisStreamTopics

            topics = RedisStreamTopics(
                config.job_status_url, crawler.settings.getdict("REDIS_PARAMS")
            )
        else:
            topics = build_topics(crawler)
        reporter = cls(crawler, config, topics)
        crawler.signals.connect(reporter.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(reporter.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(reporter.item_scraped, signal=signals.item_scraped)
        return reporter

    def item_scraped(self, item: Any) -> None:
        """Keep the first items (redacted, size-capped) for the console's job page."""
        if len(self._items) >= MAX_ITEMS:
            return
        redactor = self.config.redactor
        try:  # redacted whole first: a cut text would hide its keys from the redactor
            text = json.dumps(ItemAdapter(item).asdict(), default=str, ensure_ascii=False)
            text = json.dumps(redactor.value(json.loads(text)), ensure_ascii=False)
        except (TypeError, ValueError):
            text = json.dumps({"item": redactor.text(repr(item))})
        if len(text.encode()) > MAX_ITEM_BYTES:
            text = json.dumps({"truncated": redactor.text(text[: MAX_ITEM_BYTES // 2])})
        self._items.append(json.loads(text))

    async def spider_opened(self, spider: Spider) -> None:
        try:
            await self.topics.open()
            self._opened = True
        except Exception as exc:
            logger.warning("Job status stream unavailable (%s): not reporting", type(exc).__name__)
            return
        await self._publish("running")
        self._beat = asyncio.ensure_future(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.job_heartbeat_seconds)
            await self._publish("progress")

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        if not self._opened:
            return
        await self._publish("finished", reason)
        with contextlib.suppress(Exception):
            await self.topics.close()

    async def _publish(self, event: JobEvent, reason: str | None = None) -> None:
        assert self.crawler.stats is not None
        message = JobStatusEvent(
            job_id=self.config.job_id,
            event=event,
            at=datetime.now(UTC),
            worker=self.worker,
            stats=plain_stats(self.crawler.stats.get_stats()),
            finish_reason=reason,
            items=self._items,
        )
        self._sequence += 1
        key = f"{self.config.job_id}:{self.worker}:{self._sequence}"
        try:
            await self.topics.publish(self.config.job_status_stream, message.model_dump_json(), key)
        except Exception as exc:  # the crawl goes on; the heartbeat timeout is the fallback
            logger.warning("Job status %s not published: %s", event, type(exc).__name__)
            return
        self.crawler.stats.inc_value(f"hydra/job_status/{event}")
