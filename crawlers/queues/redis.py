"""Shared queue on Redis, with leases that survive a worker's death.

Producers push messages onto a plain list (``RPUSH hydra:prices:batches '{...}'``),
as they would for scrapy-redis. Unlike scrapy-redis's destructive pops, a claim
moves the message into a lease, all in one Lua script on the server's clock
(see ``redis_scripts`` for the keys). Any worker's claim first returns the
expired leases of *other* workers to the head of the queue and counts the
redelivery on the message itself, so poison messages are recognised. An ack
removes the lease and pushes the follow-ups in one script, so a crash never
leaves a remainder without its original or both.

The connection is built by scrapy-redis's ``get_redis`` (its connection
settings, ``REDIS_PARAMS``) with the asyncio client, so Twisted's reactor is
never blocked by a socket read. Nothing connects before the first call.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
from scrapy_redis import defaults as scrapy_redis_defaults
from scrapy_redis.connection import get_redis

from crawlers.config import HydraConfig
from crawlers.models.redaction import redact_url
from crawlers.queues import redis_scripts
from crawlers.queues.base import Acknowledgement, Checkpoint, ClaimResult, Delivery, Route

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: messages of other types one claim routes at most (the rest on the next claim)
_ROUTE_LIMIT = 200
#: dead-letter ids remembered for idempotent transfers
_TRANSFER_MEMORY_MS = 7 * 24 * 3600 * 1000
_TRANSFER_BATCH = 100


def helper_key(key: str, name: str) -> str:
    """``{key}:name``: in the same Redis Cluster slot as ``key`` itself. A key with a
    hash tag of its own (``{hydra}:prices``) keeps it: ``{hydra}:prices:name``."""
    start = key.find("{")
    end = key.find("}", start + 1) if start != -1 else -1
    if end > start + 1:
        return f"{key}:{name}"
    if "}" in key or "{" in key:
        raise ValueError(f"queue key {key!r}: braces outside a hash tag")
    return f"{{{key}}}:{name}"


def parse_envelope(raw: bytes) -> tuple[str, int, bytes]:
    message_id, deliveries, payload = raw.split(b"\n", 2)
    return message_id.decode(), int(deliveries), payload


def decode_payload(payload: bytes) -> tuple[str, bool]:
    """``(text, undecodable)``; bytes that are not UTF-8 are kept backslash-escaped."""
    try:
        return payload.decode("utf-8"), False
    except UnicodeDecodeError:
        return payload.decode("utf-8", "backslashreplace"), True


class RedisLeaseQueue:
    shared = True

    def __init__(
        self,
        url: str,
        key: str,
        *,
        deadletter_key: str,
        lease_seconds: float,
        worker_id: str,
        redis_params: dict[str, Any] | None = None,
        route: Route | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.deadletter_key = deadletter_key
        self.lease_ms = int(lease_seconds * 1000)
        self.worker_id = worker_id
        self.redis_params = redis_params or {}
        self.ready_key = helper_key(key, "ready")
        self.delayed_key = helper_key(key, "delayed")
        self.leases_key = helper_key(key, "leases")
        self.held_key = helper_key(key, "held")
        self.outbox_key = helper_key(key, "deadletter-outbox")
        self.transferred_key = helper_key(deadletter_key, "ids")
        self.route = route
        #: one ready list per routed type, e.g. ``{hydra:fetch:tasks}:ready:s3``
        self.typed_keys = (
            [helper_key(key, f"ready:{name}") for name in route.types] if route else []
        )
        self._client: redis.asyncio.Redis | None = None
        self._transfer_pending = False
        #: lease ids of claims whose reply was lost (they may be held by nobody)
        self._unsure: list[str] = []
        self.released_unsure = 0

    @classmethod
    def from_crawler(
        cls, crawler: Crawler, key: str, *, worker_id: str, route: Route | None = None
    ) -> RedisLeaseQueue:
        config = HydraConfig.from_crawler(crawler)
        return cls(
            config.redis_url,
            key,
            deadletter_key=config.deadletter_key,
            lease_seconds=config.queue_lease_seconds,
            worker_id=worker_id,
            redis_params=crawler.settings.getdict("REDIS_PARAMS"),
            route=route,
        )

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisLeaseQueue used before open()")
        return self._client

    async def open(self) -> None:
        """Build the client and register the scripts; the first call connects."""
        params: dict[str, Any] = {**scrapy_redis_defaults.REDIS_PARAMS, **self.redis_params}
        params.update(url=self.url, redis_cls=redis.asyncio.Redis, decode_responses=False)
        self._client = get_redis(**params)
        self._claim = self.client.register_script(redis_scripts.CLAIM)
        self._renew = self.client.register_script(redis_scripts.RENEW)
        self._ack = self.client.register_script(redis_scripts.ACK)
        self._checkpoint = self.client.register_script(redis_scripts.CHECKPOINT)
        self._release = self.client.register_script(redis_scripts.RELEASE)
        self._transfer = self.client.register_script(redis_scripts.TRANSFER)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def push(self, payloads: Sequence[str]) -> None:
        if payloads:
            await self.client.rpush(self.key, *payloads)

    async def claim(self, limit: int) -> ClaimResult:
        if self._transfer_pending or self._unsure:
            await self._tidy()  # before the claim: nothing may fail after it
        keys = [self.key, self.ready_key, self.delayed_key, self.leases_key, self.held_key]
        keys += self.typed_keys
        prefix = self.worker_id + ":"
        route = self.route
        route_limit = _ROUTE_LIMIT if route else 0
        leases = [prefix + secrets.token_hex(8) for _ in range(limit)]
        message_ids = [secrets.token_hex(12) for _ in range(limit + route_limit)]
        args: list[str | int] = [limit, self.lease_ms, prefix, 100, 1000]
        args += (
            [route.field, ",".join(route.types), ",".join(sorted(route.wanted))]
            if route
            else ["", "", ""]
        )
        args += [route_limit, *leases, *message_ids]
        try:
            reply = await self._claim(keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # the script may have run and its reply been lost: these leases may be
            # held with nobody renewing them; give them back at the next chance
            self._unsure.extend(leases)
            raise
        reclaimed, delayed, flat = int(reply[0]), int(reply[1]), reply[2:]
        deliveries = []
        for lease, envelope in zip(flat[::2], flat[1::2], strict=True):
            message_id, deliveries_count, raw = parse_envelope(envelope)
            payload, undecodable = decode_payload(raw)
            deliveries.append(
                Delivery(
                    lease.decode(), payload, self.key, message_id, deliveries_count, undecodable
                )
            )
        return ClaimResult(deliveries, reclaimed, delayed)

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        if not lease_ids:
            return []
        lost = await self._renew(keys=[self.leases_key], args=[self.lease_ms, *lease_ids])
        return [lease.decode() for lease in lost]

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        if not acks:
            return []
        keys = [self.leases_key, self.held_key, self.ready_key, self.delayed_key]
        keys.append(self.outbox_key)
        async with self.client.pipeline(transaction=False) as pipe:
            for ack in acks:
                args: list[Any] = [ack.lease_id, len(ack.requeue)]
                for requeue in ack.requeue:
                    args += [int(requeue.delay * 1000), secrets.token_hex(12), requeue.payload]
                args += ack.deadletter
                await self._ack(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        if any(ack.deadletter for ack in acks):
            await self._transfer_soon()
        return [bool(reply) for reply in replies]

    async def checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        if not checkpoints:
            return []
        keys = [self.leases_key, self.held_key, self.outbox_key]
        async with self.client.pipeline(transaction=False) as pipe:
            for checkpoint in checkpoints:
                has_payload = checkpoint.payload is not None
                args: list[str | int] = [
                    checkpoint.lease_id,
                    int(has_payload),
                    checkpoint.payload or "",
                ]
                args += checkpoint.deadletter
                await self._checkpoint(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        if any(checkpoint.deadletter for checkpoint in checkpoints):
            await self._transfer_soon()
        return [bool(reply) for reply in replies]

    async def _transfer_soon(self) -> None:
        """Move dead letters now; if that fails, the ack above still stands (raising
        would make the caller retry an ack that happened): ``recover()`` finishes it."""
        try:
            await self.transfer_deadletters()
        except redis.exceptions.RedisError as exc:
            logger.warning(
                "Moving dead letters to %s failed (%s); retried later", self.deadletter_key, exc
            )
            self._transfer_pending = True

    async def release(self, lease_ids: Sequence[str]) -> int:
        keys = [self.leases_key, self.held_key, self.ready_key]
        released = 0
        for lease_id in reversed(lease_ids):  # LPUSH: the last one pushed is served first
            released += int(await self._release(keys=keys, args=[lease_id]))
        return released

    async def transfer_deadletters(self) -> int:
        """Move outbox entries to the dead-letter list (another slot), idempotently.

        Entries are removed from the outbox by value after the move, so workers
        transferring at the same time never remove what the other has not moved.
        """
        moved = 0
        while True:
            reply = await self.client.lrange(self.outbox_key, 0, _TRANSFER_BATCH - 1)
            entries = [entry if isinstance(entry, bytes) else entry.encode() for entry in reply]
            if not entries:
                return moved
            ids = [_entry_id(entry) for entry in entries]
            args: list[str | int | bytes] = [int(time.time() * 1000), _TRANSFER_MEMORY_MS]
            args += [len(entries), *ids, *entries]
            keys = [self.deadletter_key, self.transferred_key]
            moved += int(await self._transfer(keys=keys, args=args))
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.lrem(self.outbox_key, 1, entry)  # type: ignore[arg-type]
                await pipe.execute()

    async def depth(self) -> int:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(self.key)
            pipe.llen(self.ready_key)
            pipe.zcard(self.delayed_key)
            for typed in self.typed_keys:
                pipe.llen(typed)
            counts = await pipe.execute()
        return sum(int(count) for count in counts)

    async def server_warnings(self) -> list[str]:
        try:
            appendonly = await self.client.config_get("appendonly")
            save = await self.client.config_get("save")
        except redis.exceptions.ResponseError:  # CONFIG disabled (managed Redis): can't tell
            return []
        aof = _config_value(appendonly, "appendonly")
        rdb = _config_value(save, "save")
        if aof != "yes" and not rdb.strip():
            return [
                f"Redis at {redact_url(self.url)} has neither AOF nor RDB persistence: a "
                "restart of Redis loses every queued and leased message. Enable "
                "`appendonly yes` for at-least-once delivery."
            ]
        return []

    async def recover(self) -> None:
        await self.transfer_deadletters()
        self._transfer_pending = False

    async def _tidy(self) -> None:
        """Finish earlier half-done steps; failures wait for the next claim."""
        try:
            if self._unsure:
                self.released_unsure += await self.release(self._unsure)
                self._unsure.clear()
            if self._transfer_pending:
                await self.recover()
        except redis.exceptions.RedisError as exc:
            logger.warning("Tidying the queue failed (%s); retried at the next claim", exc)

    def describe(self) -> str:
        return f"{redact_url(self.url)} list {self.key}"

    def describe_deadletter(self) -> str:
        return f"{redact_url(self.url)} list {self.deadletter_key}"


def _entry_id(entry: bytes) -> str:
    try:
        value = json.loads(entry).get("id")
    except (ValueError, AttributeError):
        value = None
    return str(value) if value else entry.decode("utf-8", "backslashreplace")[:200]


def _config_value(reply: dict[Any, Any], name: str) -> str:
    for key, value in reply.items():
        key_text = key.decode() if isinstance(key, bytes) else str(key)
        if key_text == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""
