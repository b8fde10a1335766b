"""Dictionaries in Redis: seeded from the files by revision, reloaded without a
restart when their version changes, left alone when it does not."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from crawlers.etl import DataProcessor, EtlSettings
from crawlers.etl.dictionaries import DictionaryStore
from crawlers.etl.settings import PACKAGED_DICTIONARIES
from tests.servers import RedisServer
from tests.unit.test_etl_processor import web

pytestmark = pytest.mark.integration
T = TypeVar("T")
DOCS = "{hydra:etl}:dictionaries"
VERSION = "{hydra:etl}:dictionaries:version"


def on_redis(server: RedisServer, scenario: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def settings(**overrides: Any) -> EtlSettings:
    return EtlSettings(**{"embeddings": False, "dictionary_check_seconds": 0, **overrides})


def hgetall_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


async def brand_of(proc: DataProcessor, brand: str, entry: str) -> tuple[str, Any]:
    outcome = await proc.process([(entry, web(f"Laptop {entry}", key=entry, brand=brand))])
    return outcome.rows[0].data["fields"]["brand"], outcome.counters["dictionary_reloads"]


def test_open_seeds_redis_once(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[int]:
        versions = []
        for _ in range(2):  # a second processor (or a restart) finds them there
            async with DataProcessor(settings(), client) as proc:
                versions.append(proc.dictionary_version)
        return versions

    assert on_redis(redis_server, scenario) == [1, 1]
    stored = redis_client.hgetall(DOCS)
    assert set(stored) == {"currencies", "stop_words", "patterns", "brands"}
    on_disk = json.loads((PACKAGED_DICTIONARIES / "brands.json").read_text(encoding="utf-8"))
    assert json.loads(stored["brands"])["data"] == on_disk["data"]


def test_a_change_is_picked_up_on_the_next_batch_without_restart(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        async with DataProcessor(settings(), client) as proc:
            before = await brand_of(proc, "Hewlett Packard", "s|1-0")
            # another process (an operator's tool) publishes a new brands dictionary
            editor = DictionaryStore(settings(), client)
            await editor.open()
            brands = editor.current.documents["brands"].data["brands"]
            new_version = await editor.publish(
                "brands", {"brands": {**brands, "Hewlett Packard Enterprise": ["hewlett packard"]}}
            )
            after = await brand_of(proc, "Hewlett Packard", "s|2-0")
            return [before, new_version, after, proc.dictionary_version]

    before, new_version, after, version = on_redis(redis_server, scenario)
    assert before == ("HP", 0)
    assert after == ("Hewlett Packard Enterprise", 1)  # reloaded once, before that batch
    assert version == new_version == 2
    assert json.loads(redis_client.hget(DOCS, "brands") or "")["revision"] == 2


def test_a_hand_edit_in_redis_counts_once_its_version_is_bumped(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        async with DataProcessor(settings(), client) as proc:
            seen = [await brand_of(proc, "acme corp", "s|1-0")]
            document = json.loads(await client.hget(DOCS, "brands") or "")
            document["data"]["brands"]["ACME"] = ["acme corp"]
            document["revision"] += 1
            await client.hset(DOCS, "brands", json.dumps(document))
            seen.append(await brand_of(proc, "acme corp", "s|2-0"))  # version unchanged
            await client.incr(VERSION)
            seen.append(await brand_of(proc, "acme corp", "s|3-0"))
            return seen

    assert on_redis(redis_server, scenario) == [("acme corp", 0), ("acme corp", 0), ("ACME", 1)]


def test_an_unchanged_version_costs_one_get_and_no_reload(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[int]:
        async with DataProcessor(settings(), client) as proc:
            loads = hgetall_calls(redis_client)
            reloads = [(await proc.process([(f"s|{i}-0", web(f"T{i}"))])).counters[
                "dictionary_reloads"] for i in range(5)]  # fmt: skip
            return [*reloads, hgetall_calls(redis_client) - loads, proc.dictionaries.reloads]

    assert on_redis(redis_server, scenario) == [0, 0, 0, 0, 0, 0, 0]


def test_the_version_is_asked_at_most_every_check_interval(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    now = [0.0]

    async def scenario(client: redis.asyncio.Redis) -> list[bool]:
        store = DictionaryStore(settings(dictionary_check_seconds=10), client, clock=lambda: now[0])
        await store.open()
        await client.incr(VERSION)
        checks = [await store.refresh()]  # too soon: not even asked
        now[0] = 10.0
        checks.append(await store.refresh())
        await client.incr(VERSION)
        checks.append(await store.refresh(force=True))
        return checks

    assert on_redis(redis_server, scenario) == [False, True, True]


def test_files_replace_redis_only_with_a_higher_revision(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    folder = tmp_path / "dictionaries"
    shutil.copytree(PACKAGED_DICTIONARIES, folder)

    def write_brands(revision: int, brands: dict[str, list[str]]) -> None:
        document = {"revision": revision, "data": {"brands": brands}}
        (folder / "brands.json").write_text(json.dumps(document), encoding="utf-8")

    async def brand_with_files(client: redis.asyncio.Redis) -> tuple[str, Any]:
        async with DataProcessor(settings(dictionaries_dir=folder), client) as proc:
            return await brand_of(proc, "initech", "s|1-0")

    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        seen = [await brand_with_files(client)]
        editor = DictionaryStore(settings(dictionaries_dir=folder), client)
        await editor.open()
        await editor.publish("brands", {"brands": {"Initech": ["initech"]}})  # revision 2
        seen.append(await brand_with_files(client))  # a restart keeps the live edit
        write_brands(2, {"INITECH (files)": ["initech"]})  # not higher than Redis's
        seen.append(await brand_with_files(client))
        write_brands(3, {"INITECH (files)": ["initech"]})  # a release with a newer one
        seen.append(await brand_with_files(client))
        return seen

    assert on_redis(redis_server, scenario) == [
        ("initech", 0),
        ("Initech", 0),
        ("Initech", 0),
        ("INITECH (files)", 0),
    ]


def test_an_invalid_dictionary_is_refused_and_the_old_one_kept(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        async with DataProcessor(settings(), client) as proc:
            document = json.loads(await client.hget(DOCS, "patterns") or "")
            document["data"]["rules"].append({"pattern": "(unclosed"})
            await client.hset(DOCS, "patterns", json.dumps(document))
            await client.incr(VERSION)
            with caplog.at_level(logging.ERROR, logger="crawlers.etl.dictionaries"):
                first = await brand_of(proc, "Hewlett-Packard", "s|1-0")
                second = await brand_of(proc, "hp inc", "s|2-0")
            return [first, second, proc.dictionary_version]

    assert on_redis(redis_server, scenario) == [("HP", 0), ("HP", 0), 1]
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "does not compile" in refusals[0].getMessage()


def test_a_flushed_redis_is_seeded_again(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> list[Any]:
        async with DataProcessor(settings(), client) as proc:
            await client.flushall()
            outcome = await proc.process([("s|1-0", web("Laptop", brand="hp inc"))])
            return [outcome.rows[0].data["fields"]["brand"], await client.exists(DOCS)]

    assert on_redis(redis_server, scenario) == ["HP", 1]
