"""The Redis lease queue against a real redis-server: leases, renewal, reclaim, atomic acks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from crawlers.queues import Acknowledgement
from crawlers.queues.redis import RedisLeaseQueue
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _queue(server: RedisServer, worker: str, lease: float = 30.0) -> RedisLeaseQueue:
    return RedisLeaseQueue(
        server.url, "q", deadletter_key="dl", lease_seconds=lease, worker_id=worker
    )


def _run(server: RedisServer, scenario: Callable[..., Awaitable[Any]], *queues: Any) -> Any:
    async def main() -> Any:
        opened = [_queue(server, **spec) for spec in queues]
        for queue in opened:
            await queue.open()
        try:
            return await scenario(*opened)
        finally:
            for queue in opened:
                await queue.close()

    return asyncio.run(main())


def test_claim_leases_instead_of_popping(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1", "m2", "m3"])
        claimed = (await queue.claim(2)).deliveries
        assert [d.payload for d in claimed] == ["m1", "m2"]
        assert redis_client.lrange("q", 0, -1) == ["m3"]
        assert sorted(redis_client.hvals("q:payloads")) == ["m1", "m2"]
        assert redis_client.zcard("q:leases") == 2

    _run(redis_server, scenario, {"worker": "w1"})


def test_expired_lease_is_reclaimed_and_counted(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(dead: RedisLeaseQueue, alive: RedisLeaseQueue) -> None:
        await dead.push(["m1"])
        (held,) = (await dead.claim(1)).deliveries
        await asyncio.sleep(0.3)
        result = await alive.claim(5)
        assert result.reclaimed == 1
        (again,) = result.deliveries
        assert (again.payload, again.redeliveries) == ("m1", 1)
        assert await dead.ack([Acknowledgement(held.lease_id, ["stale remainder"])]) == [False]
        assert await alive.ack([Acknowledgement(again.lease_id, ["remainder"], ["entry"])]) == [
            True
        ]
        assert redis_client.lrange("q", 0, -1) == ["remainder"]
        assert redis_client.lrange("dl", 0, -1) == ["entry"]
        assert redis_client.hlen("q:redeliveries") == 0

    _run(redis_server, scenario, {"worker": "dead", "lease": 0.2}, {"worker": "alive"})


def test_renewal_keeps_a_slow_worker_lease(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(slow: RedisLeaseQueue, other: RedisLeaseQueue) -> None:
        await slow.push(["m1"])
        (held,) = (await slow.claim(1)).deliveries
        for _ in range(4):
            await asyncio.sleep(0.15)
            assert await slow.renew([held.lease_id]) == []
        assert (await other.claim(5)).deliveries == []
        assert await slow.ack([Acknowledgement(held.lease_id)]) == [True]
        assert await slow.renew([held.lease_id]) == [held.lease_id]

    _run(redis_server, scenario, {"worker": "slow", "lease": 0.3}, {"worker": "other"})


def test_release_puts_the_message_back_first(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1", "m2"])
        (held,) = (await queue.claim(1)).deliveries
        assert await queue.release([held.lease_id]) == 1
        assert redis_client.lrange("q", 0, -1) == ["m1", "m2"]
        assert redis_client.zcard("q:leases") == 0

    _run(redis_server, scenario, {"worker": "w"})
