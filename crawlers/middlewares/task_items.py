"""Counts the items each task run produces, so its ack waits for all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
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

    # Both forms ("universal" middleware): a sync-only chain stays sync, which is
    # cheaper per response than Scrapy converting every callback's output to async.
    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterator[Any]:
        for output in result:
            self._count(response, output)
            yield output

    async def process_spider_output_async(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        async for output in result:
            self._count(response, output)
            yield output

    def _count(self, response: Response, output: Any) -> None:
        run = response.meta.get("hydra_run")
        if isinstance(run, TaskRun) and not isinstance(output, Request):
            self.ledger.item_emitted(run)
