"""The end of a fetch job: ``job_runs`` updated, then the parsers and status topics.

Publication is idempotent per job: the database remembers which topic got its
message, and a redelivered job skips what was already published (a crash between
the publication and that record repeats the message with the same
``idempotency_key``, which consumers recognise). Failures are set on the item,
not raised, so the spider can send the task back rather than acknowledge a job
nobody heard of.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from crawlers.config import HydraConfig
from crawlers.extensions.fetch_services import FetchServices
from crawlers.items import JobResultItem
from crawlers.models import ParsersMessage, StatusMessage
from crawlers.models.fetch_messages import StatusMetadata

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class JobResultPipeline:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JobResultPipeline:
        return cls(crawler)

    @cached_property
    def services(self) -> FetchServices:
        return FetchServices.of(self.crawler)

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, JobResultItem):
            return item
        try:
            await self._finish(item)
        except Exception as exc:
            item.error = f"{type(exc).__name__}: {exc}"
            logger.warning("Fetch job %s could not be finished: %s", item.job_id, item.error)
        return item

    async def _finish(self, item: JobResultItem) -> None:
        db, topics, store = self.services.db, self.services.topics, self.services.store
        metadata = {
            "files_processed": item.files_processed,
            "execution_time_seconds": round(item.execution_time_seconds, 3),
            "files_uploaded": item.files_uploaded,
            **item.metadata,
        }
        await db.finish_job(
            job_id=item.job_id, status=item.status, message=item.message, metadata=metadata
        )
        record = await db.job(item.job_id)
        if item.status == "success" and (record is None or record.parsers_published_at is None):
            parsers = ParsersMessage(
                job_id=item.job_id,
                channel_id=item.channel_id,
                s3_output_path=store.folder_uri(f"{item.channel_id}/{item.job_id}"),
                file_count=item.files_uploaded,
                idempotency_key=f"{item.job_id}:parsers",
            )
            await topics.publish(
                self.config.parsers_topic, parsers.model_dump_json(), parsers.idempotency_key
            )
            await db.mark_published(item.job_id, "parsers")
        if record is None or record.status_published_at is None:
            status = StatusMessage(
                job_id=item.job_id,
                channel_id=item.channel_id,
                status=item.status,
                message=item.message,
                metadata=StatusMetadata.model_validate(metadata),
                idempotency_key=f"{item.job_id}:status",
            )
            await topics.publish(
                self.config.status_topic, status.model_dump_json(), status.idempotency_key
            )
            await db.mark_published(item.job_id, "status")
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("hydra/fetch/jobs_reported")
        stats.inc_value(f"hydra/fetch/jobs_{'succeeded' if item.status == 'success' else 'failed'}")
