"""Shared queue on a Redis list, with leases that survive a worker's death.

Producers push JSON onto a plain list (``RPUSH hydra:prices:batches '{...}'``),
as they would for scrapy-redis. Unlike scrapy-redis's destructive pops, a claim
moves the message into a lease (``<key>:leases`` sorted set scored by deadline,
``<key>:payloads`` hash), all in one Lua script using the server's clock. Any
worker's claim first returns expired leases to the head of the list and counts
the redelivery in ``<key>:redeliveries`` (by payload SHA-1), so poison messages
can be recognised. An ack removes the lease and pushes the follow-ups in one
script, so a crash never leaves a remainder without its original or both.

The connection is built by scrapy-redis's ``get_redis`` (its connection
settings, ``REDIS_PARAMS``) with the asyncio client, so Twisted's reactor is
never blocked by a socket read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
from scrapy_redis import defaults as scrapy_redis_defaults
from scrapy_redis.connection import get_redis

from crawlers.config import redact_url
from crawlers.queues.base import Acknowledgement, ClaimResult, Delivery

if TYPE_CHECKING:
    from crawlers.config import HydraConfig

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: list, leases, payloads, redeliveries, sequence
# ARGV: limit, lease_ms, worker, reclaim_limit
CLAIM = (
    _NOW_MS
    + """
local reclaimed = 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, lease in ipairs(expired) do
  local payload = redis.call('HGET', KEYS[3], lease)
  if payload then
    redis.call('LPUSH', KEYS[1], payload)
    redis.call('HINCRBY', KEYS[4], redis.sha1hex(payload), 1)
    reclaimed = reclaimed + 1
  end
  redis.call('HDEL', KEYS[3], lease)
  redis.call('ZREM', KEYS[2], lease)
end
local out = {reclaimed}
for _ = 1, tonumber(ARGV[1]) do
  local payload = redis.call('LPOP', KEYS[1])
  if not payload then break end
  local lease = ARGV[3] .. ':' .. redis.call('INCR', KEYS[5])
  redis.call('HSET', KEYS[3], lease, payload)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), lease)
  local seen = redis.call('HGET', KEYS[4], redis.sha1hex(payload)) or '0'
  table.insert(out, lease)
  table.insert(out, payload)
  table.insert(out, seen)
end
return out
"""
)

# KEYS: leases; ARGV: lease_ms, lease ids...
RENEW = (
    _NOW_MS
    + """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: leases, payloads, redeliveries, list, deadletter
# ARGV: lease, requeue count, requeued payloads..., dead-letter entries...
ACK = """
local held = redis.call('ZREM', KEYS[1], ARGV[1])
if held == 0 then return 0 end
local payload = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if payload then redis.call('HDEL', KEYS[3], redis.sha1hex(payload)) end
local requeued = tonumber(ARGV[2])
for i = 3, 2 + requeued do redis.call('RPUSH', KEYS[4], ARGV[i]) end
for i = 3 + requeued, #ARGV do redis.call('RPUSH', KEYS[5], ARGV[i]) end
return 1
"""

# KEYS: leases, payloads, list; ARGV: lease
RELEASE = """
local held = redis.call('ZREM', KEYS[1], ARGV[1])
local payload = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if held == 1 and payload then
  redis.call('LPUSH', KEYS[3], payload)
  return 1
end
return 0
"""


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
    ) -> None:
        self.url = url
        self.key = key
        self.deadletter_key = deadletter_key
        self.lease_ms = int(lease_seconds * 1000)
        self.worker_id = worker_id
        self.redis_params = redis_params or {}
        self.leases_key = f"{key}:leases"
        self.payloads_key = f"{key}:payloads"
        self.redeliveries_key = f"{key}:redeliveries"
        self.sequence_key = f"{key}:lease-sequence"
        self._client: redis.asyncio.Redis | None = None

    @classmethod
    def from_config(
        cls, config: HydraConfig, key: str, *, worker_id: str, redis_params: dict[str, Any]
    ) -> RedisLeaseQueue:
        return cls(
            config.redis_url,
            key,
            deadletter_key=config.deadletter_key,
            lease_seconds=config.queue_lease_seconds,
            worker_id=worker_id,
            redis_params=redis_params,
        )

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisLeaseQueue used before open()")
        return self._client

    async def open(self) -> None:
        params: dict[str, Any] = {**scrapy_redis_defaults.REDIS_PARAMS, **self.redis_params}
        params.update(url=self.url, redis_cls=redis.asyncio.Redis, decode_responses=True)
        self._client = get_redis(**params)
        self._claim = self.client.register_script(CLAIM)
        self._renew = self.client.register_script(RENEW)
        self._ack = self.client.register_script(ACK)
        self._release = self.client.register_script(RELEASE)
        # fail loudly at start-up; later outages are retried by the ledger
        await self.client.ping()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def push(self, payloads: Sequence[str]) -> None:
        if payloads:
            await self.client.rpush(self.key, *payloads)

    async def claim(self, limit: int) -> ClaimResult:
        keys = [self.key, self.leases_key, self.payloads_key]
        keys += [self.redeliveries_key, self.sequence_key]
        reply = await self._claim(keys=keys, args=[limit, self.lease_ms, self.worker_id, 100])
        reclaimed, flat = int(reply[0]), reply[1:]
        deliveries = [
            Delivery(flat[i], flat[i + 1], self.key, int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]
        return ClaimResult(deliveries, reclaimed)

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        if not lease_ids:
            return []
        return list(await self._renew(keys=[self.leases_key], args=[self.lease_ms, *lease_ids]))

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        if not acks:
            return []
        keys = [self.leases_key, self.payloads_key, self.redeliveries_key]
        keys += [self.key, self.deadletter_key]
        async with self.client.pipeline(transaction=False) as pipe:
            for ack in acks:
                args: list[str | int] = [ack.lease_id, len(ack.requeue)]
                args += [*ack.requeue, *ack.deadletter]
                await self._ack(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [bool(reply) for reply in replies]

    async def release(self, lease_ids: Sequence[str]) -> int:
        keys = [self.leases_key, self.payloads_key, self.key]
        released = 0
        for lease_id in lease_ids:
            released += int(await self._release(keys=keys, args=[lease_id]))
        return released

    def describe_deadletter(self) -> str:
        return f"{redact_url(self.url)} list {self.deadletter_key}"
