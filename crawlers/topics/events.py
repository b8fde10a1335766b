"""The event stream (``HYDRA_EVENTS_KEY``, a Redis Stream) that task runs report on.

The ledger publishes a round's events after the flush that made their rows
durable and before the acks and checkpoints of that round; if publishing
fails, the round's acks wait for the next one, so an event is never missing
for a stored row (it may repeat after a crash: consumers are idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
from scrapy_redis import defaults as scrapy_redis_defaults
from scrapy_redis.connection import get_redis

from crawlers.config import HydraConfig
from crawlers.models.redaction import redact_url

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class EventStream:
    def __init__(self, url: str, key: str, max_length: int, redis_params: dict[str, Any]) -> None:
        self.url = url
        self.key = key
        self.max_length = max_length
        self.redis_params = redis_params
        self._client: redis.asyncio.Redis | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> EventStream:
        config = HydraConfig.from_crawler(crawler)
        params = crawler.settings.getdict("REDIS_PARAMS")
        return cls(config.redis_url, config.events_key, config.events_max_length, params)

    async def open(self) -> None:
        params: dict[str, Any] = {**scrapy_redis_defaults.REDIS_PARAMS, **self.redis_params}
        params.update(url=self.url, redis_cls=redis.asyncio.Redis, decode_responses=True)
        self._client = get_redis(**params)

    async def publish(self, messages: Sequence[str]) -> None:
        """Append every message (one ``XADD`` each, in one round trip)."""
        if self._client is None:
            raise RuntimeError("event stream used before open()")
        async with self._client.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.xadd(self.key, {"event": message}, maxlen=self.max_length, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> str:
        return f"{redact_url(self.url)} stream {self.key}"
