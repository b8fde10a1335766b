"""Sinks by URI scheme and the pipeline that feeds them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from scrapy.exceptions import NotConfigured

from crawlers.items import PriceItem
from crawlers.pipelines.sinks import SinkPipeline
from crawlers.sinks import sink_from_uri
from crawlers.sinks.jsonl import JsonLinesSink
from tests.unit.helpers import price_crawler


def test_jsonl_uris_take_absolute_and_relative_paths() -> None:
    absolute = sink_from_uri("jsonl:///var/data/out.jsonl")
    relative = sink_from_uri("jsonl://output/out.jsonl")
    assert isinstance(absolute, JsonLinesSink) and isinstance(relative, JsonLinesSink)
    assert absolute.path == Path("/var/data/out.jsonl")
    assert relative.path == Path("output/out.jsonl")


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="jsonl://"):
        sink_from_uri("parquet:///x")


def test_pipeline_is_off_without_sinks() -> None:
    crawler, _, _ = price_crawler(HYDRA_SINKS="")
    with pytest.raises(NotConfigured, match="HYDRA_SINKS"):
        SinkPipeline.from_crawler(crawler)


def test_pipeline_writes_every_item_to_every_sink(tmp_path: Path) -> None:
    uris = f"jsonl://{tmp_path}/a.jsonl,jsonl://{tmp_path}/nested/b.jsonl"
    crawler, _, ledger = price_crawler(HYDRA_SINKS=uris)
    pipeline = SinkPipeline.from_crawler(crawler)
    item = PriceItem("r", "b", "42", {"price": 3}, "2026-11-22T00:00:00+00:00", "eu", 1)

    async def scenario() -> None:
        await pipeline.open_spider()
        assert await pipeline.process_item(item) is item
        await pipeline.close_spider()

    asyncio.run(scenario())
    for name in ("a.jsonl", "nested/b.jsonl"):
        (row,) = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert row["id"] == "42" and row["data"] == {"price": 3} and row["region"] == "eu"
    assert crawler.stats.get_value("hydra/sink/rows") == 2
    assert pipeline.flush not in ledger._flush_hooks  # unregistered on close


def test_jsonl_flush_makes_rows_visible(tmp_path: Path) -> None:
    sink = JsonLinesSink.from_uri(f"jsonl://{tmp_path}/x.jsonl")

    async def scenario() -> str:
        await sink.open()
        await sink.write([{"id": 1}, {"id": 2}])
        await sink.flush()
        seen = (tmp_path / "x.jsonl").read_text()
        await sink.close()
        return seen

    assert asyncio.run(scenario()) == '{"id": 1}\n{"id": 2}\n'
