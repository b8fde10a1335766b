"""Writes every item to every configured sink; the ledger flushes them before acks."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.extensions.settlement import item_row
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.sinks import Rejection, Row, Sink, build_sink

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class SinkHandle:
    """One sink as the ledger flushes it: all sinks flush concurrently, each on its own."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._dirty = False

    def mark(self) -> None:
        self._dirty = True

    def dirty(self) -> bool:
        return self._dirty

    async def flush(self) -> list[Rejection]:
        self._dirty = False
        try:
            return await self.sink.flush()
        except BaseException:
            self._dirty = True
            raise


class SinkPipeline:
    """Rows carry their run's lease (for rejected rows) and a stable key (for dedup)."""

    def __init__(self, crawler: Crawler, sinks: list[Sink]) -> None:
        self.crawler = crawler
        assert crawler.stats is not None
        self.stats = crawler.stats
        self.handles = [SinkHandle(sink) for sink in sinks]
        self._ledger: TaskLedger | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SinkPipeline:
        config = HydraConfig.from_crawler(crawler)
        if not config.sinks:
            raise NotConfigured("SinkPipeline: no sinks; set HYDRA_SINKS to enable")
        sinks = []
        for uri in config.sinks:
            try:
                sinks.append(build_sink(crawler, uri))
            except NotConfigured as exc:
                # Scrapy would quietly disable the whole pipeline, and runs would be
                # acked with nothing stored: a sink that was asked for must work
                shown = config.redactor.url(uri)
                raise HydraConfigError([f"HYDRA_SINKS: {shown}: {exc}"]) from exc
        return cls(crawler, sinks)

    @property
    def sinks(self) -> list[Sink]:
        return [handle.sink for handle in self.handles]

    async def open_spider(self) -> None:
        for handle in self.handles:
            await handle.sink.open()
        self._ledger = self.crawler.get_extension(TaskLedger)
        if self._ledger is not None:
            for handle in self.handles:
                self._ledger.add_flushable(handle)

    async def process_item(self, item: Any) -> Any:
        ledger = self._ledger
        run = ledger.owner_of(item) if ledger is not None else None
        data = item_row(item)
        kind = run.kind if run is not None else (ledger.kind if ledger is not None else None)
        key = kind.row_key(item) if kind is not None else None
        row = Row(key or _content_key(data), data, run.lease_id if run is not None else "")
        wants_flush = False
        for handle in self.handles:
            await handle.sink.write((row,))
            handle.mark()
            wants_flush = wants_flush or handle.sink.wants_flush()
        self.stats.inc_value("hydra/sink/rows", len(self.handles))
        if wants_flush and ledger is not None:
            ledger.request_settle()
        return item

    async def close_spider(self) -> None:
        ledger = self._ledger
        if ledger is not None and ledger.queue is not None:
            # last flush, acks and checkpoints while the sinks are still open
            await ledger.settle(final=True)
        else:
            for handle in self.handles:
                await handle.flush()
        if ledger is not None:
            for handle in self.handles:
                ledger.remove_flushable(handle)
        for handle in self.handles:
            await handle.sink.close()


def _content_key(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
