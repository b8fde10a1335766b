"""Progress lines while a task spider runs, and a readable summary when it closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals

from crawlers.config import HydraConfig, project_path
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.sinks import build_sink

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def summary_lines(
    stats: dict[str, Any], kind_lines: list[str], sinks: list[str], deadletter: str
) -> list[str]:
    def count(key: str) -> int:
        return int(stats.get(f"hydra/{key}", 0))

    dead = sum(int(v) for k, v in stats.items() if k.startswith("hydra/deadletter/"))
    lines = [
        *kind_lines,
        f"Invalid messages:  {count('deadletter/invalid_message')}"
        f" (forbidden URLs: {count('deadletter/forbidden_url')})",
        f"Messages acked:    {count('queue/acked')} "
        f"(reclaimed from dead workers: {count('queue/reclaimed')}, "
        f"given back at shutdown: {count('queue/released')})",
        f"Dead letters:      {dead}",
    ]
    lines += [f"Output:            {sink}" for sink in sinks]
    lines.append(f"Dead-letter:       {deadletter}")
    failed = stats.get("hydra/worker/failed")
    if failed:
        lines.append(f"FAILED:            {failed}")
    return lines


logger = logging.getLogger(__name__)


class RunSummary:
    """Logs a progress line every ``HYDRA_PROGRESS_INTERVAL_SECONDS`` and
    :func:`summary_lines` once, when a task spider closes."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        self._progress: asyncio.Task[None] | None = None
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RunSummary:
        return cls(crawler)

    def spider_opened(self, spider: Spider) -> None:
        if getattr(spider, "task_kind", None) and self.config.progress_interval_seconds > 0:
            self._progress = asyncio.ensure_future(self._report_progress())

    async def _report_progress(self) -> None:
        ledger = TaskLedger.of(self.crawler)
        assert self.crawler.stats is not None
        last_count, last_time = 0, time.monotonic()
        while True:
            await asyncio.sleep(self.config.progress_interval_seconds)
            if ledger.kind is None or ledger.queue is None:
                continue
            what, count = ledger.kind.progress(self.crawler.stats.get_stats())
            now = time.monotonic()
            rate = (count - last_count) / max(now - last_time, 1e-9)
            last_count, last_time = count, now
            try:
                depth: object = await ledger.queue.depth()
            except Exception:
                depth = "?"
            state = " (sink failing: intake paused)" if ledger.sink_failing else ""
            logger.info(
                "Progress: %d %s (%.1f/s), %d messages held, %s waiting in the queue%s",
                count, what, rate, len(ledger.runs), depth, state,
            )  # fmt: skip

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        if self._progress is not None:
            self._progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress
        if not getattr(spider, "task_kind", None):
            return
        ledger = TaskLedger.of(self.crawler)
        await ledger.wait_closed()  # its last acks are in the stats
        assert self.crawler.stats is not None
        stats = self.crawler.stats.get_stats()
        kind_lines = ledger.kind.summary_lines(stats) if ledger.kind is not None else []
        sinks = []
        if ledger._had_flushables:  # a spider with sinks (fetch jobs store their own way)
            sinks = [build_sink(self.crawler, uri).describe() for uri in self.config.sinks]
        lines = summary_lines(stats, kind_lines, sinks, ledger.deadletter_location)
        logger.info("Hydra run summary (%s):\n  %s", reason, "\n  ".join(lines))
        if self.config.summary_path:
            path = project_path(self.config.summary_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            document = {"reason": reason, "summary": lines, "stats": stats}
            path.write_text(json.dumps(document, default=str, indent=2), encoding="utf-8")
