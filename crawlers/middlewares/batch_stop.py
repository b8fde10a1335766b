"""Stop-on-non-200 (seed 000): the first failure ends the batch, the rest is requeued."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest

from crawlers.config import HydraConfig
from crawlers.tasks.price_batches import BatchControl

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response


class BatchStopMiddleware:
    """Downloader middleware for requests carrying ``hydra_run`` and ``hydra_index``.

    It sits next to the downloader (order 950) so it sees the raw status before
    redirect/retry handling, and the batch's remainder, failed ID first, is
    requeued with ``attempt + 1`` (or dead-lettered after
    ``HYDRA_BATCH_MAX_ATTEMPTS``). IDs fetched before the failure keep their
    items and are never fetched again because of it.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.ok_statuses = frozenset(HydraConfig.from_crawler(crawler).batch_ok_statuses)
        self.control = BatchControl(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> BatchStopMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response:
        position = self.control.position(request)
        if position is None or response.status in self.ok_statuses:
            return response
        run, index = position
        self.control.stop(run, index, f"http_{response.status}", f"HTTP {response.status}")
        raise IgnoreRequest(f"batch stopped: HTTP {response.status}")

    def process_exception(self, request: Request, exception: Exception) -> None:
        position = self.control.position(request)
        if position is None or isinstance(exception, IgnoreRequest):
            return
        run, index = position
        name = type(exception).__name__
        self.control.stop(run, index, f"download_error/{name}", f"{name}: {exception}")
        raise IgnoreRequest(f"batch stopped: {name}")
