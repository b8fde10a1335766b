"""Seed 000's batch rules: sequential IDs, stop at the first failure, requeue the rest."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import quote

from scrapy import Request

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import TaskLedger, TaskRun
from crawlers.items import PriceItem
from crawlers.models import PriceBatch

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector


class BatchControl:
    """Builds a batch's requests and ends batches; used by the spider and the middleware."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)

    @property
    def stats(self) -> StatsCollector:
        return self.crawler.stats  # not set yet when the spider is built

    @cached_property
    def ledger(self) -> TaskLedger:
        return TaskLedger.of(self.crawler)  # extensions exist only once the crawl starts

    @staticmethod
    def position(request: Request) -> tuple[TaskRun, int] | None:
        run = request.meta.get("hydra_run")
        index = request.meta.get("hydra_index")
        if isinstance(run, TaskRun) and isinstance(run.message, PriceBatch) and index is not None:
            return run, int(index)
        return None

    def request(self, run: TaskRun, index: int, callback: Callable[..., object]) -> Request:
        """The POST for ``ids[index]``; retries and redirects are the batch's business."""
        batch: PriceBatch = run.message
        run.cursor = index
        template = batch.url_template or self.config.price_url_template
        url = template.replace("{id}", quote(batch.ids[index], safe=""))
        return Request(
            url,
            method="POST",
            callback=callback,
            dont_filter=True,
            meta={
                "hydra_run": run,
                "hydra_index": index,
                "dont_retry": True,
                "dont_redirect": True,
            },
        )

    def item(self, run: TaskRun, index: int, data: object) -> PriceItem:
        batch: PriceBatch = run.message
        self.stats.inc_value("hydra/prices/ids_fetched")
        return PriceItem(
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            id=batch.ids[index],
            data=data,
            fetched_at=datetime.now(UTC).isoformat(),
            region=self.config.region,
            attempt=batch.attempt,
        )

    def admit(self, run: TaskRun) -> None:
        """Count a claimed batch and let a shutdown requeue what it has not fetched."""
        batch: PriceBatch = run.message
        self.stats.inc_value("hydra/prices/batches_received")
        if batch.attempt == 0:
            self.stats.inc_value("hydra/prices/ids_received", len(batch.ids))
        if run.delivery.redeliveries:
            # the dead worker may have stored some of these: an upper bound of duplicates
            self.stats.inc_value("hydra/prices/ids_redelivered", len(batch.ids))

        def resume() -> list[str]:
            rest = batch.remainder(run.cursor, "worker shut down", next_attempt=False)
            return [rest.model_dump_json(exclude_none=True)]

        run.resume_payloads = resume

    def complete(self, run: TaskRun) -> None:
        self.stats.inc_value("hydra/prices/batches_completed")
        self.ledger.finish(run)

    def stop(self, run: TaskRun, index: int, kind: str, detail: str) -> None:
        """End the batch at ``index``: requeue the remainder, or dead-letter it."""
        batch: PriceBatch = run.message
        reason = (
            f"{detail} for id {batch.ids[index]} "
            f"(region {self.config.region}, attempt {batch.attempt})"
        )
        remainder = batch.remainder(index, reason)
        payload = remainder.model_dump_json(exclude_none=True)
        self.stats.inc_value("hydra/prices/batches_stopped")
        self.stats.inc_value(f"hydra/prices/stopped/{kind}")
        if remainder.attempt >= self.config.batch_max_attempts:
            self.stats.inc_value("hydra/prices/ids_deadlettered", len(remainder.ids))
            entry = self.ledger.dead_letter_entry(
                "max_attempts", reason, payload, attempts=remainder.attempt
            )
            self.ledger.finish(run, deadletter=[entry])
        else:
            self.stats.inc_value("hydra/prices/ids_requeued", len(remainder.ids))
            self.ledger.finish(run, requeue=[payload])
