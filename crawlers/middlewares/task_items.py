"""Counts the items each task run produces, so its ack waits for all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from scrapy import Request

from crawlers.extensions.task_ledger import TaskLedger, TaskRun

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class TaskItemsMiddleware:
    """Spider middleware: every item from a ``hydra_run`` response is owed to that run.

    It runs before the item reaches the pipelines; the ledger settles the debt
    on ``item_scraped``/``item_dropped``/``item_error``.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TaskItemsMiddleware:
        return cls(crawler)

    @cached_property
    def ledger(self) -> TaskLedger:
        return TaskLedger.of(self.crawler)  # extensions exist only once the crawl starts

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        run = response.meta.get("hydra_run")
        async for output in result:
            if isinstance(run, TaskRun) and not isinstance(output, Request):
                self.ledger.item_emitted(run)
            yield output
