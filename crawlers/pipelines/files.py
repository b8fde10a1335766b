"""Seed 003's file processing, one small pipeline per step: dedup, store, record.

A fetched file arrives hashed (SHA-256, computed while it was streamed). Its hash
is compared with the channel's last version of that path from any *other* job
(so a job redelivered after a crash decides the same as its first attempt): new
or changed files are stored under ``{channel_id}/{job_id}/{path}`` and recorded
in ``file_metadata``; unchanged ones are only counted. A step that cannot do its
work (store or database unreachable) marks the item ``error`` instead of raising:
the job then goes back to the queue whole, rather than a file row landing in the
dead-letter.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlers.extensions.fetch_services import FetchServices
from crawlers.items import FetchedFileItem

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)


class _FileStep:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        assert crawler.stats is not None
        self.stats: StatsCollector = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Any:
        return cls(crawler)

    @cached_property
    def services(self) -> FetchServices:
        return FetchServices.of(self.crawler)

    def _failed(self, item: FetchedFileItem, step: str, exc: Exception) -> FetchedFileItem:
        item.outcome = "error"
        item.error = f"{step} {item.path}: {type(exc).__name__}: {exc}"
        logger.warning("Fetch job %s: %s", item.job_id, item.error)
        return item


class FileDedupPipeline(_FileStep):
    """``new``, ``changed`` or ``unchanged``, against the channel's history."""

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, FetchedFileItem) or item.outcome:
            return item
        try:
            previous = await self.services.db.previous_hash(
                item.channel_id, item.path, excluding_job=item.job_id
            )
        except Exception as exc:
            return self._failed(item, "checking the history of", exc)
        if previous == item.sha256:
            item.outcome = "unchanged"
            self.stats.inc_value("hydra/fetch/files_unchanged")
        else:
            item.outcome = "new" if previous is None else "changed"
        return item


class FileStorePipeline(_FileStep):
    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, FetchedFileItem) or item.outcome not in ("new", "changed"):
            return item
        key = f"{item.channel_id}/{item.job_id}/{item.path}"
        try:
            await self.services.store.put(Path(item.local_path), key)
        except Exception as exc:
            return self._failed(item, "storing", exc)
        item.outcome = "stored"
        return item


class FileRecordPipeline(_FileStep):
    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, FetchedFileItem) or item.outcome != "stored":
            return item
        try:
            await self.services.db.record_file(
                job_id=item.job_id,
                channel_id=item.channel_id,
                file_path=item.path,
                content_hash=item.sha256,
                file_size=item.size,
            )
        except Exception as exc:
            return self._failed(item, "recording", exc)
        item.outcome = "uploaded"
        self.stats.inc_value("hydra/fetch/files_uploaded")
        self.stats.inc_value("hydra/fetch/bytes_uploaded", item.size)
        return item
