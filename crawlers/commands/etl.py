"""``scrapy etl``: seed 002's DataProcessor over the raw-result streams.

Needs ``HYDRA_REDIS_URL`` (the streams' server). Reads ``HYDRA_ETL_STREAMS``
with the consumer group ``HYDRA_ETL_GROUP``, writes to ``HYDRA_ETL_SINKS``,
exits when idle for ``HYDRA_IDLE_CLOSE_SECONDS`` (0: runs until SIGINT/SIGTERM,
which finish the round in hand) and prints counts at each stage. With
``HYDRA_METRICS_PORT`` it serves ``/metrics`` like a worker (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from scrapy import Spider
from scrapy.commands import ScrapyCommand
from scrapy.crawler import Crawler
from scrapy.exceptions import UsageError

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.services.command import configure_service_logging
from crawlers.sinks import Sink, build_sink

if TYPE_CHECKING:
    import argparse
    from collections import Counter
    from collections.abc import AsyncIterator

    from scrapy.settings import Settings

    from crawlers.services.etl.service import EtlService


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Run the ETL DataProcessor: raw streams -> clean, dedup, enrich -> sinks"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        try:
            config = HydraConfig.from_settings(self.settings)
        except HydraConfigError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        if not config.redis_url:
            raise UsageError("scrapy etl needs HYDRA_REDIS_URL (the raw streams' server)")
        if not config.etl_sinks:
            raise UsageError("scrapy etl needs HYDRA_ETL_SINKS (where processed records go)")
        configure_service_logging(config, "etl")
        stats = asyncio.run(run_etl(config, self.settings))
        print_summary(config, stats)
        self.exitcode = 0


async def run_etl(config: HydraConfig, settings: Settings) -> Counter[str]:
    from crawlers.etl.processor import DataProcessor
    from crawlers.services.etl.service import EtlService

    # sinks are built as for a crawl (from_crawler): a crawler that never crawls carries
    # the settings
    carrier = Crawler(Spider, settings)
    sinks: list[Sink] = [build_sink(carrier, uri) for uri in config.etl_sinks]
    service = EtlService(config, DataProcessor.from_config(config), sinks)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, service.stop)
    await service.open()
    try:
        async with serve_metrics(config, service):
            return await service.run()
    finally:
        await service.close()


@contextlib.asynccontextmanager
async def serve_metrics(config: HydraConfig, service: EtlService) -> AsyncIterator[None]:
    """With ``HYDRA_METRICS_PORT``: ``/metrics`` (in the SD file) while the service runs,
    its consumer group's lag sampled every ``HYDRA_METRICS_INTERVAL_SECONDS``."""
    if config.metrics_port is None:
        yield
        return
    from prometheus_client import CollectorRegistry

    from crawlers.monitoring.endpoint import MetricsEndpoint
    from crawlers.monitoring.etl import EtlMetricSet

    registry = CollectorRegistry(auto_describe=True)
    service.metrics = metrics = EtlMetricSet(
        registry, streams=config.etl_streams, group=config.etl_group, consumer=service.consumer
    )
    endpoint = MetricsEndpoint(
        registry, bind=config.metrics_bind, port=config.metrics_port, sd_path=config.metrics_sd_file
    )

    async def sample() -> None:
        while True:
            try:
                await asyncio.wait_for(
                    metrics.sample_groups(service.client), config.metrics_interval_seconds
                )
            except Exception as exc:  # Redis away: keep the last values
                logging.getLogger(__name__).debug("Stream lag not sampled: %s", exc)
            await asyncio.sleep(config.metrics_interval_seconds)

    await asyncio.to_thread(endpoint.start, {"worker": service.consumer, "role": "etl"})
    sampler = asyncio.create_task(sample())
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await endpoint.stop()


def print_summary(config: HydraConfig, stats: Counter[str]) -> None:
    dead = sum(count for key, count in stats.items() if key.startswith("deadletter/"))
    lines = [
        f"Streams:        {', '.join(config.etl_streams)} (group {config.etl_group})",
        f"Records read:   {stats['read']} (taken over from dead processors: {stats['claimed']})",
        f"Duplicates:     {stats['duplicates']}",
        f"Processed:      {stats['processed']}",
        f"Dead letters:   {dead}",
        f"Acknowledged:   {stats['acked']}",
        f"Sink retries:   {stats['sink_errors']}",
    ]
    logging.getLogger(__name__).info("ETL summary:\n  %s", "\n  ".join(lines))
