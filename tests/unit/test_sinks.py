"""Sinks by URI scheme, the JSON-lines sink's durability rules, and the pipeline."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfigError, project_root
from crawlers.items import PriceItem
from crawlers.pipelines.sinks import SinkPipeline
from crawlers.sinks import Row, SinkError, build_sink
from crawlers.sinks.jsonl import JsonLinesSink
from tests.unit.helpers import batch_run, price_crawler


def _rows(*ids: int) -> list[Row]:
    return [Row(f"k{n}", {"id": n}) for n in ids]


def _sink(tmp_path: Path, query: str = "") -> JsonLinesSink:
    return JsonLinesSink.from_uri(f"jsonl://{tmp_path}/x.jsonl{query}")


def test_uris_take_absolute_and_project_relative_paths() -> None:
    crawler, _, _ = price_crawler()
    absolute = build_sink(crawler, "jsonl:///var/data/out.jsonl")
    relative = build_sink(crawler, "jsonl://output/out.jsonl")
    assert isinstance(absolute, JsonLinesSink) and isinstance(relative, JsonLinesSink)
    assert absolute.path == Path("/var/data/out.jsonl")
    # relative to the project (scrapy.cfg), not to wherever the worker was started
    assert relative.path == project_root() / "output/out.jsonl"
    with pytest.raises(HydraConfigError, match="jsonl://"):
        build_sink(crawler, "parquet:///x")


def test_flush_writes_and_fsyncs_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    sink = _sink(tmp_path)

    async def scenario() -> tuple[str, str]:
        await sink.open()
        await sink.write(_rows(1, 2))
        before = (tmp_path / "x.jsonl").read_text()
        assert await sink.flush() == []
        after = (tmp_path / "x.jsonl").read_text()
        await sink.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == ""  # nothing reaches the file before the flush
    assert after == '{"id": 1}\n{"id": 2}\n'
    assert synced == [tmp_path.name, "x.jsonl"]  # the new file's directory entry, then its rows


def test_a_failed_write_keeps_every_row_and_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    budget = {"bytes": 5}  # the disk has room for 5 more bytes, then it is full

    def full_disk(fd: int, data: Any) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        chunk = bytes(data[: budget["bytes"]])
        budget["bytes"] -= len(chunk)
        return real_write(fd, chunk)

    sink = _sink(tmp_path)

    async def scenario() -> None:
        await sink.open()
        await sink.write(_rows(1))
        await sink.flush()
        await sink.write(_rows(2, 3))
        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(SinkError, match="No space left"):
            await sink.flush()
        assert (tmp_path / "x.jsonl").read_text() == '{"id": 1}\n'  # cut back, no torn line
        assert sink.pending_rows == 2
        monkeypatch.setattr(os, "write", real_write)
        await sink.write(_rows(4))
        await sink.flush()
        await sink.close()

    asyncio.run(scenario())
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert rows == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]


def test_a_torn_last_line_is_cut_when_the_file_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "da')  # a writer killed mid-write
    sink = _sink(tmp_path)

    async def scenario() -> None:
        await sink.open()
        await sink.write(_rows(4))
        await sink.flush()
        await sink.close()

    asyncio.run(scenario())
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n{"id": 4}\n'


def test_two_writers_never_share_a_file(tmp_path: Path) -> None:
    first, second = _sink(tmp_path), _sink(tmp_path)

    async def scenario() -> None:
        await first.open()
        with pytest.raises(SinkError, match="another process"):
            await second.open()
        await first.close()
        await second.open()  # free again once the first is closed
        await second.close()

    asyncio.run(scenario())


def test_rows_that_cannot_be_serialised_are_rejected_not_fatal(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    looped: dict[str, Any] = {}
    looped["self"] = looped

    async def scenario() -> list[str]:
        await sink.open()
        await sink.write([Row("bad", looped, "lease-1"), *_rows(1)])
        rejected = await sink.flush()
        await sink.close()
        return [f"{r.row.key}:{r.row.owner}" for r in rejected]

    assert asyncio.run(scenario()) == ["bad:lease-1"]
    assert (tmp_path / "x.jsonl").read_text() == '{"id": 1}\n'


def test_the_sink_asks_for_a_flush_by_rows_bytes_and_age(tmp_path: Path) -> None:
    sink = _sink(tmp_path, "?flush_rows=3&flush_seconds=3600")
    aged = _sink(tmp_path / "b", "?flush_seconds=0")

    async def scenario() -> list[bool]:
        seen = [sink.wants_flush()]
        await sink.write(_rows(1, 2))
        seen.append(sink.wants_flush())
        await sink.write(_rows(3))
        seen.append(sink.wants_flush())
        await aged.write(_rows(1))
        seen.append(aged.wants_flush())
        return seen

    assert asyncio.run(scenario()) == [False, False, True, True]


def test_pipeline_is_off_without_sinks() -> None:
    crawler, _, _ = price_crawler(HYDRA_SINKS="")
    with pytest.raises(NotConfigured, match="HYDRA_SINKS"):
        SinkPipeline.from_crawler(crawler)


def test_pipeline_writes_every_item_to_every_sink_with_its_run(tmp_path: Path) -> None:
    uris = f"jsonl://{tmp_path}/a.jsonl,jsonl://{tmp_path}/nested/b.jsonl"
    crawler, _, ledger = price_crawler(HYDRA_SINKS=uris)
    pipeline = SinkPipeline.from_crawler(crawler)
    run = batch_run(ledger, ["42"])
    item = PriceItem("r", "b", "42", {"price": 3}, "2026-11-22T00:00:00+00:00", "eu", 1)
    ledger.attach(run, item)
    seen: list[Row] = []

    async def scenario() -> None:
        await pipeline.open_spider()
        original = pipeline.handles[0].sink.write

        async def spy(rows: Any) -> None:
            seen.extend(rows)
            await original(rows)

        pipeline.handles[0].sink.write = spy  # type: ignore[method-assign]
        assert await pipeline.process_item(item) is item
        assert all(handle.dirty() for handle in pipeline.handles)
        await pipeline.close_spider()

    asyncio.run(scenario())
    for name in ("a.jsonl", "nested/b.jsonl"):
        (row,) = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert row["id"] == "42" and row["data"] == {"price": 3} and row["region"] == "eu"
    (written,) = seen
    assert (written.key, written.owner) == ("r/42", run.lease_id)  # identity and owner
    assert crawler.stats.get_value("hydra/sink/rows") == 2
    assert ledger._flushables == []  # unregistered on close


def test_a_sink_that_is_not_configured_is_a_configuration_error(tmp_path: Path) -> None:
    """Scrapy would disable the whole pipeline on NotConfigured, and runs would then be
    acked with nothing stored."""

    class Unavailable:
        @classmethod
        def from_crawler(cls, crawler: Any, uri: str) -> Any:
            raise NotConfigured("set HYDRA_WAREHOUSE_TOKEN to enable")

    import tests.unit.test_sinks as this_module

    this_module.Unavailable = Unavailable  # type: ignore[attr-defined]
    crawler, _, _ = price_crawler(
        HYDRA_SINKS=f"jsonl://{tmp_path}/a.jsonl,warehouse://x?token=s3cret",
        HYDRA_SINK_SCHEMES='{"warehouse": "tests.unit.test_sinks.Unavailable"}',
    )
    with pytest.raises(HydraConfigError) as caught:
        SinkPipeline.from_crawler(crawler)
    assert "HYDRA_WAREHOUSE_TOKEN" in str(caught.value) and "s3cret" not in str(caught.value)
