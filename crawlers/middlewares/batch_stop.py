"""Stop-on-non-200 (seed 000): the first refused status ends the batch.

Downloader middleware for price requests (``meta["hydra_index"]``), added by
the ``prices`` spider at order 950, next to the downloader, so it sees the raw
status before redirect and retry handling. It turns a status outside
``HYDRA_BATCH_OK_STATUSES`` into :class:`StatusRefused`; the spider's errback
hands that to the batch's kind, which requeues the remainder (failed ID first,
``attempt + 1``, after ``Retry-After`` or a back-off) or dead-letters it.
Download errors take the same path without this middleware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawlers.config import HydraConfig
from crawlers.tasks.failures import StatusRefused, parse_retry_after

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class BatchStopMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.ok_statuses = frozenset(HydraConfig.from_crawler(crawler).batch_ok_statuses)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> BatchStopMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response:
        if response.status in self.ok_statuses or "hydra_index" not in request.meta:
            return response
        retry_after = parse_retry_after(response.headers.get(b"Retry-After"))
        raise StatusRefused(response.status, retry_after)
