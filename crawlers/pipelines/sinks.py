"""Writes every item to every configured sink, and flushes them before acks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.sinks import Sink, sink_from_uri

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class SinkPipeline:
    """Registers its flush with the TaskLedger: no message is acked before its rows are durable."""

    def __init__(self, crawler: Crawler, sinks: list[Sink]) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.sinks = sinks
        self._ledger: TaskLedger | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SinkPipeline:
        config = HydraConfig.from_crawler(crawler)
        if not config.sinks:
            raise NotConfigured("SinkPipeline: no sinks; set HYDRA_SINKS to enable")
        return cls(crawler, [sink_from_uri(uri) for uri in config.sinks])

    async def open_spider(self) -> None:
        for sink in self.sinks:
            await sink.open()
        self._ledger = self.crawler.get_extension(TaskLedger)
        if self._ledger is not None:
            self._ledger.add_flush_hook(self.flush)

    async def process_item(self, item: Any) -> Any:
        row = ItemAdapter(item).asdict()
        for sink in self.sinks:
            await sink.write([row])
        self.stats.inc_value("hydra/sink/rows", len(self.sinks))
        return item

    async def flush(self) -> None:
        for sink in self.sinks:
            await sink.flush()
        self.stats.inc_value("hydra/sink/flushes")

    async def close_spider(self) -> None:
        if self._ledger is not None:
            # final flush, and acks of what is ready, while the sinks are still open
            await self._ledger.settle(flush=True)
            self._ledger.remove_flush_hook(self.flush)
        for sink in self.sinks:
            await sink.close()
