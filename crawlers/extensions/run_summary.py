"""A readable end-of-run summary: what was asked, stored, requeued, dead-lettered, and where."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.sinks import sink_from_uri

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


def summary_lines(stats: dict[str, Any], config: HydraConfig, deadletter: str) -> list[str]:
    def count(key: str) -> int:
        return int(stats.get(f"hydra/{key}", 0))

    lines = [
        f"IDs asked:         {count('prices/ids_seeded') or count('prices/ids_received')}",
        f"IDs stored:        {count('prices/ids_fetched')}",
        f"IDs requeued:      {count('prices/ids_requeued')} "
        f"(in {count('prices/batches_stopped')} stopped batches)",
        f"IDs dead-lettered: {count('prices/ids_deadlettered')}",
        f"Invalid messages:  {count('deadletter/invalid_message')}",
        f"Messages acked:    {count('queue/acked')} "
        f"(reclaimed from dead workers: {count('queue/reclaimed')})",
    ]
    lines += [f"Output:            {sink_from_uri(uri).describe()}" for uri in config.sinks]
    lines.append(f"Dead-letter:       {deadletter}")
    return lines


class RunSummary:
    """Logs :func:`summary_lines` when a task spider closes."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RunSummary:
        return cls(crawler)

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        if getattr(spider, "hydra_queue_key", None) is None:
            return
        ledger = TaskLedger.of(self.crawler)
        await ledger.wait_closed()  # its last acks are in the stats
        stats = self.crawler.stats.get_stats()
        lines = summary_lines(stats, self.config, ledger.deadletter_location)
        logger.info("Hydra run summary (%s):\n  %s", reason, "\n  ".join(lines))
        if self.config.summary_path:
            path = Path(self.config.summary_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            document = {"reason": reason, "summary": lines, "stats": stats}
            path.write_text(json.dumps(document, default=str, indent=2), encoding="utf-8")
