"""Topics: where jobs announce their results (seed 003's parsers and status topics).

With ``HYDRA_REDIS_URL`` a topic is a Redis Stream (``XADD``; consumers read it
with consumer groups); embedded, a JSON-lines file per topic under
``HYDRA_TOPICS_PATH``. A publication returns once it is durable in the backend,
so a task is acknowledged only after its messages are out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from crawlers.config import HydraConfig

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class Topics(Protocol):
    async def open(self) -> None: ...

    async def publish(self, topic: str, message: str, idempotency_key: str) -> None:
        """Append one JSON ``message`` to ``topic``."""

    async def close(self) -> None: ...

    def describe(self, topic: str) -> str:
        """Where a topic's messages are, for people (no credentials)."""


def build_topics(crawler: Crawler) -> Topics:
    config = HydraConfig.from_crawler(crawler)
    if config.redis_url:
        from crawlers.topics.streams import RedisStreamTopics

        return RedisStreamTopics.from_crawler(crawler)
    from crawlers.topics.files import JsonLinesTopics

    return JsonLinesTopics.from_crawler(crawler)


__all__ = ["Topics", "build_topics"]
