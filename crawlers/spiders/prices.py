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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy import Request
from scrapy.http import TextResponse

from crawlers.config import HydraConfig
from crawlers.models import PriceBatch
from crawlers.spiders.base import TaskSpider
from crawlers.tasks.price_batches import PriceBatchKind

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from crawlers.items import PriceItem
    from crawlers.tasks.base import TaskRun

logger = logging.getLogger(__name__)


class PricesSpider(TaskSpider):
    name = "prices"
    task_kind = "price_batch"
    #: price batches only: one item and at most one request per response
    custom_settings = {
        # Scrapy starts CONCURRENT_ITEMS asyncio tasks for *every* response's output;
        # the default 100 halves a worker's throughput
        "CONCURRENT_ITEMS": 2,
        "COOKIES_ENABLED": False,
        # one request at a time per batch: HYDRA_QUEUE_PREFETCH is the concurrency,
        # Scrapy's own limits are raised so that they never bind first
        "CONCURRENT_REQUESTS": 256,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 256,
    }
    task_components: ClassVar[dict[str, dict[str, int]]] = {
        # sees the raw status first (before redirect/retry): anything not OK stops the batch
        "DOWNLOADER_MIDDLEWARES": {"crawlers.middlewares.batch_stop.BatchStopMiddleware": 950},
    }
    config: HydraConfig

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
        return spider

    @property
    def batches(self) -> PriceBatchKind:
        kind = self.kind
        assert isinstance(kind, PriceBatchKind)
        return kind

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

    def seed_payloads(self) -> list[str]:
        if not self.seed_ids:
            if self.config.embedded:
                logger.warning(
                    "Nothing to do: pass -a ids=1,2,3, or set HYDRA_REDIS_URL to consume "
                    "batches pushed to %s",
                    self.config.prices_queue_key,
                )
            return []
        batches = self.seed_batches()
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("hydra/prices/ids_seeded", len(self.seed_ids))
        logger.info("Queued %d IDs in %d batches", len(self.seed_ids), len(batches))
        return [batch.model_dump_json(exclude_none=True) for batch in batches]

    def start_task(self, run: TaskRun) -> Iterator[Request]:
        yield self.batches.request(run, 0, self.parse_price)

    def parse_price(self, response: Response) -> Iterator[PriceItem | Request]:
        run = self.run_of(response)
        if run is None:
            return  # the batch was stopped or its lease lost meanwhile
        index = int(response.meta["hydra_index"])
        try:
            if not isinstance(response, TextResponse):
                raise ValueError("not a text response")
            data = response.json()
        except ValueError:
            self.fail_task(response, "invalid_json", "malformed JSON body")
            return
        yield self.batches.item(run, index, data)
        if index + 1 < len(run.message.ids):
            yield self.batches.request(run, index + 1, self.parse_price)
