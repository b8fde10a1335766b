"""Worker errors to Sentry (``HYDRA_SENTRY_DSN``; see crawlers/monitoring/sentry.py).

Reported: a spider callback's exception (``spider_error``) and every dead letter of
reason ``item_error`` (a message event), each tagged ``task_kind``, ``spider``,
``job`` (``HYDRA_JOB_ID``), ``region`` and ``channel`` when the request's meta or the
item names one; other logged errors arrive through sentry-sdk's logging integration
with the same process-wide tags. Scrapy's own "Spider error processing" / "Error
processing item" log lines are not turned into events again (they would duplicate).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import sentry_sdk
from scrapy import Spider, signals
from scrapy.exceptions import NotConfigured
from sentry_sdk.integrations.logging import ignore_logger

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import dead_lettered
from crawlers.monitoring.sentry import init_sentry

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure

    from crawlers.models import DeadLetterEntry

CHANNEL_KEYS = ("channel_id", "channel")


def _channel(mapping: Any) -> str | None:
    if isinstance(mapping, dict):
        for key in CHANNEL_KEYS:
            value = mapping.get(key)
            if value not in (None, ""):
                return str(value)
    return None


class SentryReporter:
    def __init__(self, crawler: Crawler, config: HydraConfig) -> None:
        self.crawler = crawler
        self.config = config

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SentryReporter:
        config = HydraConfig.from_crawler(crawler)
        if not config.sentry_dsn:
            raise NotConfigured("no Sentry: set HYDRA_SENTRY_DSN to enable error reporting")
        init_sentry(config, "worker")
        # reported below with their tags; the log lines would make a second event
        ignore_logger("scrapy.core.scraper")
        extension = cls(crawler, config)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_error, signal=signals.spider_error)
        crawler.signals.connect(extension.dead_lettered, signal=dead_lettered)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def tags(self, spider: Spider | None, channel: str | None = None) -> dict[str, str]:
        tags = {"region": self.config.region, "process": "worker"}
        if spider is not None:
            tags["spider"] = spider.name
            tags["task_kind"] = str(getattr(spider, "task_kind", "") or spider.name)
        if self.config.job_id:
            tags["job"] = self.config.job_id
        if channel:
            tags["channel"] = channel
        return tags

    def spider_opened(self, spider: Spider) -> None:
        """Tags for every event of this worker (logged errors included)."""
        sentry_sdk.get_global_scope().set_tags(self.tags(spider))

    def spider_error(self, failure: Failure, response: Any, spider: Spider) -> None:
        request = getattr(response, "request", None)
        meta = getattr(request, "meta", None) if request is not None else None
        channel = _channel(meta)
        with sentry_sdk.new_scope() as scope:
            scope.set_tags(self.tags(spider, channel))
            if request is not None:
                scope.set_context("request", {"url": request.url, "method": request.method})
            # the exception with its own traceback (the callback's frames)
            sentry_sdk.capture_exception(failure.value)

    def dead_lettered(self, entry: DeadLetterEntry) -> None:
        if entry.reason != "item_error":
            return
        try:
            row = json.loads(entry.payload)
        except ValueError:
            row = None
        spider = self.crawler.spider
        with sentry_sdk.new_scope() as scope:
            scope.set_tags(self.tags(spider, _channel(row)))
            scope.set_tag("deadletter_reason", entry.reason)
            scope.set_context(
                "dead_letter",
                {
                    "id": entry.id,
                    "kind": entry.kind,
                    "source": entry.source,
                    "message_id": entry.message_id,
                    "worker": entry.worker,
                },
            )
            sentry_sdk.capture_message(f"dead letter item_error: {entry.error}", level="error")

    def spider_closed(self, spider: Spider) -> None:
        sentry_sdk.flush(timeout=5)
