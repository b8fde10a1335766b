"""The ``prices`` worker (seed 000): POSTs each price ID of a batch, one after another.

Embedded: ``scrapy crawl prices -a ids=1,2,3 -a url_template='http://host/price/{id}'``
splits the IDs into batch messages on an in-process queue and exits when done.
Distributed: with ``HYDRA_REDIS_URL`` set, it consumes the JSON batch messages
that any system pushes onto ``hydra:prices:batches`` (and also pushes the
``-a ids`` batches there, if given).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider
from scrapy.http import TextResponse

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.items import PriceItem
from crawlers.models import PriceBatch
from crawlers.tasks.price_batches import BatchControl

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class PricesSpider(Spider):
    name = "prices"
    config: HydraConfig
    batches: BatchControl

    def __init__(
        self,
        ids: str | None = None,
        url_template: str | None = None,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.seed_ids = [part.strip() for part in (ids or "").split(",") if part.strip()]
        self.seed_url_template = url_template
        self.run_id = run_id or f"local-{uuid.uuid4().hex[:12]}"

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> PricesSpider:
        spider: PricesSpider = super().from_crawler(crawler, *args, **kwargs)
        spider.config = HydraConfig.from_crawler(crawler)
        spider.batches = BatchControl(crawler)
        return spider

    @property
    def hydra_queue_key(self) -> str:
        """Tells the TaskLedger which queue this spider consumes."""
        return self.config.prices_queue_key

    def seed_batches(self) -> list[PriceBatch]:
        size = self.config.price_batch_size
        return [
            PriceBatch(
                run_id=self.run_id,
                batch_id=f"{self.run_id}-{number:05d}",
                ids=self.seed_ids[start : start + size],
                url_template=self.seed_url_template,
            )
            for number, start in enumerate(range(0, len(self.seed_ids), size))
        ]

    async def start(self) -> AsyncIterator[Request]:
        ledger = TaskLedger.of(self.crawler)
        if self.seed_ids:
            batches = self.seed_batches()
            await ledger.push([b.model_dump_json(exclude_none=True) for b in batches])
            self.crawler.stats.inc_value("hydra/prices/ids_seeded", len(self.seed_ids))
            logger.info("Queued %d IDs in %d batches", len(self.seed_ids), len(batches))
        elif self.config.embedded:
            logger.warning(
                "Nothing to do: pass -a ids=1,2,3, or set HYDRA_REDIS_URL to consume "
                "batches pushed to %s",
                self.hydra_queue_key,
            )
        async for run in ledger.consume(PriceBatch.model_validate_json):
            self.batches.admit(run)
            yield self.batches.request(run, 0, self.parse_price)

    def parse_price(self, response: Response) -> Iterator[PriceItem | Request]:
        position = self.batches.position(response.request) if response.request else None
        if position is None:
            raise RuntimeError(f"response without a batch position: {response}")
        run, index = position
        try:
            if not isinstance(response, TextResponse):
                raise ValueError("not a text response")
            data = response.json()
        except ValueError:
            self.batches.stop(run, index, "invalid_json", "malformed JSON body")
            return
        yield self.batches.item(run, index, data)
        if index + 1 < len(run.message.ids):
            yield self.batches.request(run, index + 1, self.parse_price)
        else:
            self.batches.complete(run)
