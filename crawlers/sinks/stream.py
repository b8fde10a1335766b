"""Raw results to a Redis Stream: ``stream://hydra:raw:prices[?maxlen=N]``.

Each item becomes one entry whose ``message`` field holds a
:class:`~crawlers.models.raw_record.RawRecord`: the item and where it came from
(task kind, spider, task run, scheduler job, worker, region), for ``scrapy etl``
and any other consumer group. The stream lives on ``HYDRA_REDIS_URL``.

Rows are serialised on ``write()`` and kept until ``flush()`` has added them all
in one pipelined round trip (``XADD``); a flush that fails raises
:class:`SinkError` and keeps every row, so the runs they belong to stay leased
(flush-before-ack). A row added again after a crash keeps its ``key``: consumers
deduplicate on it. ``maxlen`` caps the stream (approximately, as Redis trims).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio
import redis.exceptions

from crawlers.config import HydraConfig, redact_url
from crawlers.models.raw_record import RawRecord
from crawlers.sinks.base import Rejection, Row, SinkError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class StreamSink:
    def __init__(
        self,
        uri: str,
        redis_url: str,
        key: str,
        *,
        origin: dict[str, str],
        maxlen: int | None = None,
        flush_rows: int = 1000,
        flush_seconds: float = 0.5,
    ) -> None:
        self.uri = uri
        self.redis_url = redis_url
        self.key = key
        self.origin = origin
        self.maxlen = maxlen
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._client: redis.asyncio.Redis | None = None
        self._pending: list[tuple[Row, str]] = []
        self._pending_since = 0.0
        self._rejected: list[Rejection] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> StreamSink:
        config = HydraConfig.from_crawler(crawler)
        if not config.redis_url:
            raise ValueError(f"{uri}: a stream sink needs HYDRA_REDIS_URL (the stream's server)")
        parts = urlsplit(uri)
        key = (parts.netloc + parts.path).strip("/")
        if not key:
            raise ValueError(f"stream sink URI without a stream key: {uri!r}")
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        spider = crawler.spider
        origin = {
            "task_type": str(getattr(spider, "task_kind", "") or ""),
            "source": str(getattr(spider, "name", "") or ""),
            "job": config.job_id,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "region": config.region,
        }
        maxlen = int(options["maxlen"]) if "maxlen" in options else None
        return cls(
            uri,
            config.redis_url,
            key,
            origin=origin,
            maxlen=maxlen,
            flush_rows=int(options.get("flush_rows", 1000)),
            flush_seconds=float(options.get("flush_seconds", 0.5)),
        )

    async def open(self) -> None:
        self._client = redis.asyncio.Redis.from_url(self.redis_url)

    async def write(self, rows: Sequence[Row]) -> None:
        now = datetime.now(UTC)
        for row in rows:
            try:
                record = RawRecord(
                    key=row.key, task=row.owner, fetched_at=now, item=dict(row.data),
                    **self.origin,
                )  # fmt: skip
                message = record.model_dump_json()
            except (ValueError, TypeError) as exc:  # not JSON-able, a key too long
                self._rejected.append(Rejection(row, f"not a raw record: {exc}"[:500]))
                continue
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((row, message))

    def wants_flush(self) -> bool:
        if not self._pending:
            return bool(self._rejected)
        if len(self._pending) >= self.flush_rows:
            return True
        return time.monotonic() - self._pending_since >= self.flush_seconds

    async def flush(self) -> list[Rejection]:
        rejected, self._rejected = self._rejected, []
        if not self._pending:
            return rejected
        if self._client is None:
            raise SinkError(f"{self.describe()}: flush before open()")
        pending = self._pending
        options: dict[str, Any] = {}
        if self.maxlen is not None:
            options = {"maxlen": self.maxlen, "approximate": True}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for _row, message in pending:
                    pipe.xadd(self.key, {"message": message}, **options)
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._rejected = rejected + self._rejected  # given back with the next flush
            raise SinkError(f"{self.describe()}: {type(exc).__name__}: {exc}") from None
        self._pending = self._pending[len(pending) :]
        return rejected

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> str:
        return f"Redis stream {self.key} on {redact_url(self.redis_url)}"

    def pending_rows(self) -> int:
        return len(self._pending)
