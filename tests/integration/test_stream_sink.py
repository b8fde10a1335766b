"""The ``stream://`` sink on a real redis-server: one RawRecord entry per item, nothing
before the flush, rows kept through an outage and added once it is over."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from scrapy.utils.test import get_crawler

from crawlers.models.raw_record import RawRecord
from crawlers.sinks import Row, SinkError, build_sink
from crawlers.spiders.prices import PricesSpider
from tests.servers import RedisServer
from tests.unit.helpers import PROJECT_SETTINGS, QUIET

pytestmark = pytest.mark.integration


def _sink(url: str, uri: str) -> object:
    crawler = get_crawler(PricesSpider, {**PROJECT_SETTINGS, **QUIET, "HYDRA_REDIS_URL": url})
    crawler.spider = PricesSpider.from_crawler(crawler)
    return build_sink(crawler, uri)


def test_rows_become_raw_records_only_when_flushed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = server.client()
    sink = _sink(server.url, "stream://hydra:raw:test?maxlen=1000")

    async def scenario() -> tuple[int, int]:
        await sink.open()  # type: ignore[attr-defined]
        rows = [Row(key=f"r/{n}", data={"id": str(n), "price": n * 1.5}, owner="lease-1")
                for n in range(3)]  # fmt: skip
        await sink.write(rows)  # type: ignore[attr-defined]
        before = client.xlen("hydra:raw:test")
        assert await sink.flush() == []  # type: ignore[attr-defined]
        after = client.xlen("hydra:raw:test")
        await sink.close()  # type: ignore[attr-defined]
        return before, after

    try:
        before, after = asyncio.run(scenario())
        entries = client.xrange("hydra:raw:test")
    finally:
        client.close()
        server.stop()
    assert (before, after) == (0, 3)
    records = [RawRecord.model_validate_json(fields["message"]) for _id, fields in entries]
    assert [r.key for r in records] == ["r/0", "r/1", "r/2"]
    first = records[0]
    assert (first.task_type, first.source, first.task) == ("price_batch", "prices", "lease-1")
    assert first.item == {"id": "0", "price": 0.0}


def test_an_outage_keeps_the_rows_for_the_next_flush(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    sink = _sink(server.url, "stream://hydra:raw:outage")

    async def scenario() -> list[str]:
        await sink.open()  # type: ignore[attr-defined]
        await sink.write([Row(key="k1", data={"id": "1"}), Row(key="k2", data={"id": "2"})])  # type: ignore[attr-defined]
        server.stop()
        with pytest.raises(SinkError, match="hydra:raw:outage"):
            await sink.flush()  # type: ignore[attr-defined]
        assert sink.pending_rows() == 2  # type: ignore[attr-defined]
        restarted = RedisServer(tmp_path / "redis2")
        restarted.port = port  # the same address: the sink reconnects by itself
        restarted.start()
        try:
            assert await sink.flush() == []  # type: ignore[attr-defined]
            client = restarted.client()
            keys = [json.loads(f["message"])["key"] for _i, f in client.xrange("hydra:raw:outage")]
            client.close()
        finally:
            await sink.close()  # type: ignore[attr-defined]
            restarted.stop()
        return keys

    assert asyncio.run(scenario()) == ["k1", "k2"]
