"""Topics as Redis Streams: ``XADD topic * message <json> idempotency_key <key>``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio
from scrapy_redis import defaults as scrapy_redis_defaults
from scrapy_redis.connection import get_redis

from crawlers.config import HydraConfig
from crawlers.models.redaction import redact_url

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class RedisStreamTopics:
    def __init__(self, url: str, redis_params: dict[str, Any]) -> None:
        self.url = url
        self.redis_params = redis_params
        self._client: redis.asyncio.Redis | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RedisStreamTopics:
        config = HydraConfig.from_crawler(crawler)
        return cls(config.redis_url, crawler.settings.getdict("REDIS_PARAMS"))

    async def open(self) -> None:
        params: dict[str, Any] = {**scrapy_redis_defaults.REDIS_PARAMS, **self.redis_params}
        params.update(url=self.url, redis_cls=redis.asyncio.Redis, decode_responses=True)
        self._client = get_redis(**params)

    async def publish(self, topic: str, message: str, idempotency_key: str) -> None:
        if self._client is None:
            raise RuntimeError("topics used before open()")
        await self._client.xadd(topic, {"message": message, "idempotency_key": idempotency_key})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self, topic: str) -> str:
        return f"{redact_url(self.url)} stream {topic}"
