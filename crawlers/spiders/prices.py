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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.http import TextResponse

from crawlers.config import HydraConfig
from crawlers.models import PriceBatch
from crawlers.spiders.base import TaskSpider
from crawlers.tasks.base import RunFailure
from crawlers.tasks.price_batches import PriceBatchKind

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from crawlers.items import PriceItem
    from crawlers.tasks.base import TaskRun

logger = logging.getLogger(__name__)


class PricesSpider(TaskSpider):
    name = "prices"
    task_kind = "price_batch"
    #: Price batches only: one item and at most one request per response, one POST
    #: at a time per batch, no redirects or retries (a stop requeues the batch), no
    #: cookies. Only the components such a request needs run (the lean hot path,
    #: measured in benchmarks/README.md); the task components are merged in by
    #: ``TaskSpider.update_settings``.
    custom_settings = {
        # Scrapy starts CONCURRENT_ITEMS asyncio tasks for *every* response's output;
        # the default 100 halves a worker's throughput
        "CONCURRENT_ITEMS": 2,
        "COOKIES_ENABLED": False,
        # one request at a time per batch: HYDRA_QUEUE_PREFETCH is the concurrency,
        # Scrapy's own limits are raised so that they never bind first
        "CONCURRENT_REQUESTS": 256,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 256,
        "DOWNLOAD_HANDLERS": {
            "http": "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler",
            "https": "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler",
        },
        "DOWNLOADER_MIDDLEWARES": {
            # kept: DownloadTimeout, UserAgent, HttpCompression, HttpProxy (region egress)
            "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,  # URL policy instead
            "scrapy.downloadermiddlewares.httpauth.HttpAuthMiddleware": None,  # auth per batch
            "scrapy.downloadermiddlewares.defaultheaders.DefaultHeadersMiddleware": None,
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,  # dont_retry anyway
            "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
            "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,  # dont_redirect
            "scrapy.downloadermiddlewares.cookies.CookiesMiddleware": None,
            "scrapy.downloadermiddlewares.stats.DownloaderStats": None,
        },
        "SPIDER_MIDDLEWARES": {
            # a response is either OK (BatchStopMiddleware) or never reaches the callback,
            # and a price request never follows a link: none of these has work to do
            "scrapy.spidermiddlewares.start.StartSpiderMiddleware": None,
            "scrapy.spidermiddlewares.httperror.HttpErrorMiddleware": None,
            "scrapy.spidermiddlewares.referer.RefererMiddleware": None,
            "scrapy.spidermiddlewares.urllength.UrlLengthMiddleware": None,
            "scrapy.spidermiddlewares.depth.DepthMiddleware": None,
            "scrapy.spidermiddlewares.metacopy.MetaCopyDetectionMiddleware": None,
        },
    }
    task_components: ClassVar[dict[str, dict[str, int]]] = {
        # sees the raw status first (before redirect/retry): anything not OK stops the batch
        "DOWNLOADER_MIDDLEWARES": {"crawlers.middlewares.batch_stop.BatchStopMiddleware": 950},
        # every price row to every sink in HYDRA_SINKS
        "ITEM_PIPELINES": {"crawlers.pipelines.sinks.SinkPipeline": 900},
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

    async def start_task(self, run: TaskRun) -> AsyncIterator[PriceItem]:
        """POST each ID in turn and yield its item; the first failure ends the batch.

        The requests of a batch form a chain (the next only after the previous
        response), so they are fetched directly (:meth:`TaskSpider.fetch`): through
        the downloader middlewares, without a round trip through the scheduler and
        the spider middlewares for each ID.
        """
        batches = self.batches
        batch: PriceBatch = run.message
        for index in range(len(batch.ids)):
            request = batches.request(run, index)
            try:
                response = await self.fetch(request)
            except Exception as exc:  # a refused status, a download error, a policy stop
                self.fail_run(run, request, exc)
                return
            if run.finished:
                return  # stopped meanwhile (deadline, lease lost): not ours to store
            try:
                if not isinstance(response, TextResponse):
                    raise ValueError("not a text response")
                data = response.json()
            except ValueError:
                self.ledger.fail(run, RunFailure("invalid_json", "malformed JSON body", request))
                return
            yield batches.item(run, index, data)
