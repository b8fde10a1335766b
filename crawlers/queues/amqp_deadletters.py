"""``scrapy deadletter`` on RabbitMQ: the entries in the durable queue ``HYDRA_DEADLETTER_KEY``.

A queue has no "look without taking": the store takes every message that was in
the queue when it started (``basic.get``, manual ack), keeps their bytes, acks
only the ones an operator removes (``purge``), and closes its channel, which puts
the rest back where they were. Workers publishing meanwhile are not disturbed;
an operator reading at the same time as another sees only what the other has not
taken at that moment. Replaying onto the task queue is not offered here
(``scrapy deadletter replay`` refuses): show the entry and push its payload.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq

from crawlers.deadletters import StoredEntry
from crawlers.models.redaction import redact_url
from crawlers.queues.amqp import CONNECT_TIMEOUT, split_url

T = TypeVar("T")


class AmqpDeadLetterStore:
    """The dead-letter queue workers publish to (``AmqpQueue``), for ``scrapy deadletter``."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self._connect_url = split_url(url)[0]

    def describe(self) -> str:
        return f"{redact_url(self.url)} queue {self.key}"

    def read(self) -> list[StoredEntry]:
        bodies, _ = self._run(self._take_all(()))
        return [StoredEntry.parse(number, body) for number, body in enumerate(bodies, 1)]

    def remove(self, entries: Sequence[StoredEntry]) -> list[bool]:
        if not entries:
            return []
        _, removed = self._run(self._take_all([stored.raw for stored in entries]))
        results = []
        for stored in entries:  # the first of equal entries removed first, as LREM 1
            results.append(removed[stored.raw] > 0)
            removed[stored.raw] -= 1
        return results

    def close(self) -> None:
        return None

    @staticmethod
    def _run(coroutine: Coroutine[Any, Any, T]) -> T:
        """On a loop of its own (a caller may be inside a running one)."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coroutine).result()

    async def _take_all(self, remove: Sequence[bytes]) -> tuple[list[bytes], Counter[bytes]]:
        """Bodies of what the queue held at the start, and how many of each of
        ``remove`` were acked (removed for good)."""
        wanted = Counter(remove)
        removed: Counter[bytes] = Counter()
        bodies: list[bytes] = []
        connection = await aio_pika.connect(self._connect_url, timeout=CONNECT_TIMEOUT)
        try:
            channel = await connection.channel(publisher_confirms=False)
            try:
                queue = await channel.declare_queue(self.key, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return bodies, removed  # no worker has dead-lettered anything yet
            result = queue.declaration_result
            count = int(result.message_count or 0) if result is not None else 0
            while len(bodies) < count:
                message = await queue.get(no_ack=False, fail=False, timeout=CONNECT_TIMEOUT)
                if message is None:
                    break
                bodies.append(message.body)
                if wanted[message.body] > removed[message.body]:
                    await message.ack()
                    removed[message.body] += 1
            await channel.close()  # every message not acked goes back, in its place
        finally:
            await connection.close()
        return bodies, removed
