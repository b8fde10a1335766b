"""Embeddings with the real all-MiniLM-L6-v2 (the packaged weights, offline): similar
titles land closer than unrelated ones, the model loads once per process, and the
event loop keeps running while it encodes.

No warning filter is needed: torch 2.13, transformers and sentence-transformers
import and encode without warnings here (checked with ``-W error``)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest

from crawlers.etl import DataProcessor, EtlSettings, enrich
from crawlers.etl.enrich import SentenceEmbedder, packaged_model_path
from tests.unit.test_etl_processor import price, web

pytestmark = pytest.mark.integration


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_similar_titles_are_closer_than_unrelated_ones() -> None:
    items = [
        ("s|1-0", web("Apple iPhone 15 Pro Max 256GB smartphone, titanium", key="a")),
        ("s|2-0", web("iPhone 15 Pro Max (256 GB) by Apple - natural titanium", key="b")),
        ("s|3-0", web("Garden hose 20 m with spray nozzle", key="c")),
        ("s|4-0", web("Expandable garden water hose, 20m, 7 spray patterns", key="d")),
        ("s|5-0", price("101")),  # prices want no embedding
    ]

    async def scenario() -> dict[str, list[float] | None]:
        async with DataProcessor(EtlSettings(dedup_window_seconds=0)) as processor:
            outcome = await processor.process(items)
        assert outcome.counters["embedded"] == 4
        return {row.entry_id: row.data.get("embedding") for row in outcome.rows}

    vectors = asyncio.run(scenario())
    phone, phone2, hose, hose2 = (vectors[f"s|{i}-0"] for i in range(1, 5))
    assert vectors["s|5-0"] is None
    assert phone and phone2 and hose and hose2
    assert len(phone) == 384 and abs(math.fsum(x * x for x in phone) - 1) < 1e-3  # unit length
    assert cosine(phone, phone2) > cosine(phone, hose) + 0.3
    assert cosine(hose, hose2) > cosine(hose, phone2) + 0.3
    assert cosine(phone, phone2) > 0.8


def test_the_model_is_loaded_once_and_never_blocks_the_loop() -> None:
    texts = [f"Wireless keyboard model {i} with backlit keys and USB-C" for i in range(400)]
    first, second = SentenceEmbedder(), SentenceEmbedder()

    async def scenario() -> tuple[float, float]:
        await first.embed(["warm up"])  # the load itself is in the thread too
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        vectors = await second.embed(texts)
        took = time.perf_counter() - started
        task.cancel()
        assert len(vectors) == len(texts)
        return took, max(gaps)

    took, longest_gap = asyncio.run(scenario())
    assert list(enrich._models) == [str(packaged_model_path())]  # one model for both
    assert took > 0.3, "too quick to tell"
    assert longest_gap < took / 3, (took, longest_gap)  # on the loop, it would be ~took


def test_the_model_loads_without_network() -> None:
    """In a fresh process where every socket connection fails."""
    code = """
import asyncio, socket
def refuse(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from crawlers.etl.enrich import SentenceEmbedder
vectors = asyncio.run(SentenceEmbedder().embed(["offline"]))
assert len(vectors[0]) == 384
"""
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=300)


def test_throughput_with_and_without_embeddings() -> None:
    """Records per second on a synthetic batch of web items (printed with ``-s``)."""
    batch = [
        (
            f"s|{i}-0",
            web(f"Product {i}: stainless steel kettle {i % 7} l", key=f"k{i}",
                description=f"<p>Boils fast, model {i}</p>", price=f"${i % 90}.99"),
        )
        for i in range(500)
    ]  # fmt: skip

    async def rate(embeddings: bool) -> float:
        settings = EtlSettings(embeddings=embeddings, dedup_window_seconds=0)
        async with DataProcessor(settings) as processor:
            if processor.embedder is not None:
                await processor.embedder.embed(["warm up"])
            started = time.perf_counter()
            outcome = await processor.process(batch)
            assert outcome.counters["rows"] == len(batch)
            return len(batch) / (time.perf_counter() - started)

    without, with_embeddings = asyncio.run(rate(False)), asyncio.run(rate(True))
    print(f"\nETL throughput: {without:.0f} records/s without embeddings, "
          f"{with_embeddings:.0f} with (500 web items, CPU)")  # fmt: skip
    assert without > with_embeddings
