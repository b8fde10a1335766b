"""Prometheus ``/metrics`` of a worker, on ``HYDRA_METRICS_PORT``.

Off unless ``HYDRA_METRICS_PORT`` is set (``0``: a free port, announced in the
log). The server (``crawlers.monitoring.endpoint``, shared with ``scrapy etl``)
listens on ``HYDRA_METRICS_BIND``; with ``HYDRA_METRICS_SD_FILE`` the worker adds
itself to that Prometheus ``file_sd`` file when the spider opens and removes
itself when it closes.

The metrics come from Scrapy's stats collector, copied every
``HYDRA_METRICS_INTERVAL_SECONDS`` (and once more at the end) by a background
task on the reactor: nothing is hooked into the per-request path. The same
task samples the queue depth (the queue's own ``depth()`` call, awaited with a
timeout, so a slow queue server delays only the sample) and the leases held.
The flush histogram times the ledger's flush rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from scrapy import Spider, signals
from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig
from crawlers.monitoring.endpoint import MetricsEndpoint
from crawlers.monitoring.worker import WorkerMetricSet

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from crawlers.extensions.task_ledger import TaskLedger

logger = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self, crawler: Crawler, config: HydraConfig) -> None:
        self.crawler = crawler
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics: WorkerMetricSet | None = None
        self.ledger: TaskLedger | None = None
        self.endpoint = MetricsEndpoint(
            self.registry,
            bind=config.metrics_bind,
            port=config.metrics_port,
            sd_path=config.metrics_sd_file,
        )
        self._sampler: asyncio.Task[None] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> WorkerMetrics:
        config = HydraConfig.from_crawler(crawler)
        if config.metrics_port is None:
            raise NotConfigured("no /metrics: set HYDRA_METRICS_PORT to enable (0: a free port)")
        extension = cls(crawler, config)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    # -- lifecycle -----------------------------------------------------------

    async def spider_opened(self, spider: Spider) -> None:
        kind = str(getattr(spider, "task_kind", None) or spider.name)
        self.metrics = WorkerMetricSet(self.registry, kind=kind, region=self.config.region)
        self.ledger = self._find_ledger()
        self._time_flushes()
        worker_id = self.ledger.worker_id if self.ledger is not None else str(os.getpid())
        self.metrics.info.info(
            {"worker": worker_id, "spider": spider.name, "kind": kind, "region": self.config.region}
        )
        self.sample_stats()
        self.endpoint.start({"worker": worker_id, "spider": spider.name})
        self._sampler = asyncio.ensure_future(self._sample_loop())

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.ledger is not None:
            await self.ledger.wait_closed()  # its last flush and acks are in the stats
        self.sample_stats()
        if self.metrics is not None:
            self.metrics.leases_held.set(0)
        await self.endpoint.stop()

    @property
    def port(self) -> int:
        return self.endpoint.port

    # -- sampling ------------------------------------------------------------

    def _find_ledger(self) -> TaskLedger | None:
        from crawlers.extensions.task_ledger import TaskLedger

        return self.crawler.get_extension(TaskLedger)

    def sample_stats(self) -> None:
        """Copy the stats' increments into the metrics (cheap: one pass over a dict)."""
        if self.metrics is None or self.crawler.stats is None:
            return
        self.metrics.sync(self.crawler.stats.get_stats())
        ledger = self.ledger
        if ledger is not None:
            self.metrics.leases_held.set(len(ledger.runs))
            self.metrics.sink_failing.set(1 if ledger.sink_failing else 0)

    async def sample_queue(self) -> None:
        queue = self.ledger.queue if self.ledger is not None else None
        if queue is None or self.metrics is None:
            return
        depth = await asyncio.wait_for(queue.depth(), self.config.metrics_interval_seconds)
        self.metrics.queue_depth.labels(queue.key).set(depth)

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval_seconds)
            self.sample_stats()
            try:
                await self.sample_queue()
            except Exception as exc:  # the queue server is away: keep the last value
                logger.debug("Queue depth not sampled: %s", exc)

    def _time_flushes(self) -> None:
        """Time the ledger's flush rounds: the ones that flushed (not those skipped
        during a back-off) show as a change of its flush counters."""
        ledger, metrics, stats = self.ledger, self.metrics, self.crawler.stats
        if ledger is None or metrics is None or stats is None:
            return
        flush: Callable[[bool], Awaitable[bool]] = ledger._flush

        def rounds() -> Any:
            return stats.get_value("hydra/sink/flushes", 0) + stats.get_value(
                "hydra/sink/flush_errors", 0
            )

        async def timed_flush(final: bool) -> bool:
            before, started = rounds(), time.perf_counter()
            try:
                return await flush(final)
            finally:
                if rounds() != before:
                    metrics.flush_seconds.observe(time.perf_counter() - started)

        ledger._flush = timed_flush  # type: ignore[method-assign]
