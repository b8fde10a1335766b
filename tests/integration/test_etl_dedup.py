"""Content dedup across processors and runs, on a real Redis (``SET NX PX GET``):
within the window, after it, a processor that died mid-batch, two racing, and what
a key costs in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from crawlers.etl import DataProcessor, EtlSettings
from crawlers.etl.dedup import DIGEST_BYTES, ContentKeys, content_digest, owner_token
from tests.servers import RedisServer
from tests.unit.test_etl_processor import price

pytestmark = pytest.mark.integration
T = TypeVar("T")
PREFIX = "hydra:etl:k:"


def on_redis(server: RedisServer, scenario: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def processor(client: redis.asyncio.Redis, **settings: Any) -> DataProcessor:
    return DataProcessor(EtlSettings(embeddings=False, **settings), client)


async def rows_of(proc: DataProcessor, batch: list[tuple[str, str]]) -> list[str]:
    outcome = await proc.process(batch)
    return [row.entry_id for row in outcome.rows]


def test_across_runs_within_the_window_then_after_it(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[list[str]]:
        seen = []
        for run, entry in enumerate(["s|1-0", "s|2-0"]):  # two runs: two processes' memory
            async with processor(client, dedup_window_seconds=0.5) as proc:
                seen.append(
                    await rows_of(proc, [(entry, price("101")), (f"s|{run}-9", price("7"))])
                )
        await asyncio.sleep(0.6)  # the window has passed
        async with processor(client, dedup_window_seconds=0.5) as proc:
            seen.append(await rows_of(proc, [("s|3-0", price("101"))]))
        return seen

    assert on_redis(redis_server, scenario) == [["s|1-0", "s|0-9"], [], ["s|3-0"]]


def test_a_redelivered_entry_is_its_own_not_a_duplicate(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A processor claims, then dies before its sink stored the rows: the entries are
    processed again elsewhere and must not be dropped as duplicates of themselves."""

    async def scenario(client: redis.asyncio.Redis) -> tuple[list[str], list[str], list[str]]:
        async with processor(client) as dead:
            first = await rows_of(dead, [("raw|5-0", price("101"))])
        async with processor(client) as heir:
            outcome = await heir.process([("raw|6-0", price("101")), ("raw|5-0", price("101"))])
            return first, [r.entry_id for r in outcome.rows], outcome.duplicates

    first, again, duplicates = on_redis(redis_server, scenario)
    assert first == ["raw|5-0"] and again == ["raw|5-0"] and duplicates == ["raw|6-0"]


def test_racing_processors_keep_one(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        procs = [processor(client) for _ in range(4)]
        for proc in procs:
            await proc.open()
        batches = [[(f"s|{p}-{i}", price(str(i))) for i in range(50)] for p in range(4)]
        outcomes = await asyncio.gather(
            *(p.process(b) for p, b in zip(procs, batches, strict=True))
        )
        return [row for outcome in outcomes for row in outcome.rows]

    rows = on_redis(redis_server, scenario)
    assert sorted(row.data["fields"]["id"] for row in rows) == sorted(str(i) for i in range(50))


def test_claims_expire_and_release_in_redis(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    digest = content_digest(["price_batch", "price", ["101"]])

    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        keys = ContentKeys(window_seconds=60, local_max_keys=10, prefix=PREFIX, client=client)
        claimed = await keys.claim([(digest, "s|1-0")])
        ttl = await client.pttl(PREFIX.encode() + digest)
        value = await client.get(PREFIX.encode() + digest)
        other = ContentKeys(window_seconds=60, local_max_keys=10, prefix=PREFIX, client=client)
        duplicate = await other.claim([(digest, "s|2-0")])
        await keys.release([digest])
        after_release = await other.claim([(digest, "s|2-0")])
        return [claimed, ttl, value, duplicate, after_release]

    claimed, ttl, value, duplicate, after_release = on_redis(redis_server, scenario)
    assert claimed == [True] and 59_000 < ttl <= 60_000
    assert int(value) == owner_token("s|1-0")
    assert duplicate == [False] and after_release == [True]


def test_bytes_per_dedup_key(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """What one content key costs: ``MEMORY USAGE`` (the key, its value object, the
    main table's entry) and the growth of ``used_memory`` (which adds the expiry
    table and the hash tables' buckets). Printed for the record (``pytest -s``)."""
    count = 20_000
    digests = [content_digest([i]) for i in range(count)]

    async def scenario(client: redis.asyncio.Redis) -> None:
        keys = ContentKeys(window_seconds=3600, local_max_keys=10, prefix=PREFIX, client=client)
        for start in range(0, count, 1000):
            claims = [(d, f"s|{start + i}-0") for i, d in enumerate(digests[start : start + 1000])]
            assert all(await keys.claim(claims))

    before = int(redis_client.info("memory")["used_memory"])
    on_redis(redis_server, scenario)
    grown = (int(redis_client.info("memory")["used_memory"]) - before) / count
    sample = [PREFIX.encode() + d for d in digests[:500]]
    raw = redis.Redis.from_url(redis_server.url)
    try:
        usage = [int(raw.memory_usage(key) or 0) for key in sample]
        encoding = raw.object("encoding", sample[0])
    finally:
        raw.close()
    per_key = sum(usage) / len(usage)
    print(
        f"\ndedup key: {len(PREFIX)}-byte prefix + {DIGEST_BYTES}-byte digest, owner as an "
        f"integer ({encoding!r}); MEMORY USAGE {per_key:.0f} B/key; used_memory "
        f"+{grown:.0f} B/key over {count} keys (with expiry and table overhead)"
    )
    assert encoding in (b"int", "int")  # the owner is stored inline, no allocation
    assert per_key <= 72  # a longer prefix or a string owner would cost 88
    assert grown < 200


def test_a_window_of_zero_keeps_no_redis_keys(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[list[str]]:
        async with processor(client, dedup_window_seconds=0) as proc:
            return [
                await rows_of(proc, [("s|1-0", price("1"))]),
                await rows_of(proc, [("s|2-0", price("1"))]),  # still dropped, from memory
            ]

    assert on_redis(redis_server, scenario) == [["s|1-0"], []]
    assert redis_client.keys(PREFIX + "*") == []
