"""Attributes every output of a task request to its run, and ends the request there.

Spider middleware, outermost (order 10), so it sees what the other middlewares
let through. For a response of a task request (``meta["hydra_lease"]``) it:

- gives follow-up requests the run's lease and counts them as outstanding, and
  counts items, so the run is acknowledged only after all of them;
- drops the outputs of a run that has already ended (stopped, timed out, lease
  lost): they belong to a message that is requeued or owned by another worker;
- turns an exception of the callback into a failure of that run only;
- marks the request done when its output is exhausted, so a run with nothing
  outstanding ends by itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from crawlers.extensions.task_ledger import TaskLedger
from crawlers.tasks.base import RunFailure

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class TaskRunMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        assert crawler.stats is not None
        self.stats = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TaskRunMiddleware:
        return cls(crawler)

    @cached_property
    def ledger(self) -> TaskLedger:
        return TaskLedger.of(self.crawler)  # extensions exist only once the crawl starts

    # Both forms ("universal" middleware): a sync-only chain stays sync, which is
    # cheaper per response than Scrapy converting every callback's output to async.
    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterator[Any]:
        request = response.request
        lease = request.meta.get("hydra_lease") if request is not None else None
        if lease is None or request is None:
            yield from result
            return
        attributed = request.meta.get("hydra_outputs_attributed", False)
        try:
            for output in result:
                if self._keep(lease, attributed, output):
                    yield output
        except Exception as exc:
            self._failed(request, lease, exc)
        finally:
            self.ledger.request_done(request)

    async def process_spider_output_async(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        request = response.request
        lease = request.meta.get("hydra_lease") if request is not None else None
        if lease is None or request is None:
            async for output in result:
                yield output
            return
        attributed = request.meta.get("hydra_outputs_attributed", False)
        try:
            async for output in result:
                if self._keep(lease, attributed, output):
                    yield output
        except Exception as exc:
            self._failed(request, lease, exc)
        finally:
            self.ledger.request_done(request)

    def _keep(self, lease: str, attributed: bool, output: Any) -> bool:
        """Attribute ``output`` to its live run; ``False`` (drop it) once the run ended."""
        run = self.ledger.run_for(lease)
        if run is None:
            if output is not None:
                self.stats.inc_value("hydra/task/outputs_dropped")
            return False
        if not attributed:
            self.ledger.attach(run, output)
        return True

    def process_spider_exception(
        self, response: Response, exception: Exception
    ) -> Iterable[Any] | None:
        """A callback of a task request raised: that run fails, the worker goes on."""
        request = response.request
        lease = request.meta.get("hydra_lease") if request is not None else None
        if lease is None or request is None:
            return None
        self._failed(request, lease, exception)
        self.ledger.request_done(request)
        return []

    def _failed(self, request: Request, lease: str, exc: BaseException) -> None:
        self.stats.inc_value("hydra/task/callback_errors")
        logger.error(
            "Spider error processing %s", request, exc_info=(type(exc), exc, exc.__traceback__)
        )
        run = self.ledger.run_for(lease)
        if run is not None:
            detail = f"{type(exc).__name__}: {exc}"
            self.ledger.fail(run, RunFailure("callback_error", detail, request))
