"""The DataProcessor embedded (no Redis): every entry ends as a row, a duplicate or a
failure; one bad record never fails its batch; extractors come from a registry;
embeddings are asked for once per batch, only where a task type wants them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from crawlers.etl import DataProcessor, EtlError, EtlSettings, EtlSettingsError, Extractor
from crawlers.etl.cleaning import FieldSpec
from crawlers.etl.enrich import canonical_json
from crawlers.etl.extractors import EXTRACTORS_BASE, build_extractors
from crawlers.etl.settings import PACKAGED_DICTIONARIES


def raw_record(task_type: str, item: dict[str, Any], key: str = "k", **origin: str) -> str:
    record = {
        "key": key,
        "task_type": task_type,
        "source": origin.get("source", "prices"),
        "task": origin.get("task", "lease-1"),
        "job": origin.get("job", "job-1"),
        "worker": origin.get("worker", "host:1"),
        "region": origin.get("region", "eu-west"),
        "fetched_at": "2024-03-05T10:00:00Z",
        "item": item,
    }
    return json.dumps(record)


def price(price_id: str, amount: Any = 12.5, currency: str = "USD", **data: Any) -> str:
    body = {"id": price_id, "price": amount, "currency": currency, **data}
    item = {"run_id": "r1", "batch_id": "b1", "id": price_id, "data": body, "attempt": 0}
    return raw_record("price_batch", item, key=f"r1/{price_id}")


def web(title: str, key: str = "w", **fields: Any) -> str:
    return raw_record("web", {"title": title, **fields}, key=key, source="web")


class FakeEmbedder:
    """Records what it is asked; a vector from the text's hash."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def check(self) -> None:
        pass

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[hashlib.sha256(t.encode()).digest()[0] / 255.0, 1.0] for t in texts]


class Exploding(Extractor):
    record_type = "boom"
    fields = (FieldSpec("x", "label"),)

    def extract(self, item: Any) -> dict[str, Any]:
        if item.get("explode"):
            raise ZeroDivisionError("a bug in an extractor")
        return super().extract(item)


EXPLODING = f"{__name__}.Exploding"


def run(processor: DataProcessor, batches: list[list[tuple[str, str]]]) -> list[Any]:
    async def scenario() -> list[Any]:
        async with processor:
            return [await processor.process(batch) for batch in batches]

    return asyncio.run(scenario())


def embedded(**settings: Any) -> DataProcessor:
    return DataProcessor(EtlSettings(**settings), embedder=FakeEmbedder())


def test_a_poison_record_fails_alone_with_its_reason() -> None:
    batch = [
        ("s|1-0", price("101")),
        ("s|2-0", "{not json"),
        ("s|3-0", json.dumps({"key": "k", "item": {}})),  # JSON, not a RawRecord
        ("s|4-0", raw_record("carrier_pigeon", {})),
        ("s|5-0", price("102", amount="twelve dollars")),
        ("s|6-0", price("103", currency="ZZZ")),
        ("s|7-0", raw_record("price_batch", {"data": {"price": 1}})),  # no id
        ("s|8-0", raw_record("boom", {"explode": True})),
        ("s|9-0", raw_record("fetch_task", {"neither": "file nor result"})),
        ("s|10-0", price("104")),
    ]
    processor = embedded(extractors={"boom": EXPLODING})
    [outcome] = run(processor, [batch])
    assert [row.entry_id for row in outcome.rows] == ["s|1-0", "s|10-0"]
    reasons = {f.entry_id: f.reason for f in outcome.failures}
    assert reasons == {
        "s|2-0": "invalid_json",
        "s|3-0": "invalid_record",
        "s|4-0": "unknown_task_type",
        "s|5-0": "invalid_value",
        "s|6-0": "invalid_value",
        "s|7-0": "missing_field",
        "s|8-0": "extractor_error",
        "s|9-0": "missing_field",
    }
    by_id = {f.entry_id: f for f in outcome.failures}
    assert by_id["s|2-0"].raw == "{not json"  # the raw entry, for the dead letter
    assert "carrier_pigeon" in by_id["s|4-0"].error and "price_batch" in by_id["s|4-0"].error
    assert by_id["s|5-0"].error.startswith("price:")
    assert "ZeroDivisionError" in by_id["s|8-0"].error
    assert outcome.counters["received"] == 10
    assert outcome.counters["failures/invalid_value"] == 2
    assert outcome.counters["rows"] + outcome.counters["failures"] == 10


def test_rows_carry_cleaned_fields_provenance_and_hashes() -> None:
    item = price("101", amount="$1,234.5", currency="", status=" OK ")
    [outcome] = run(embedded(), [[("s|1-0", item)]])
    [row] = outcome.rows
    assert row.key == "r1/101"
    data = row.data
    fields = data["fields"]
    assert fields["price"] == "1234.50" and fields["currency"] == "USD"
    assert fields["status"] == "ok"
    assert {k: data[k] for k in ("task_type", "spider", "task", "job", "worker", "region")} == {
        "task_type": "price_batch",
        "spider": "prices",
        "task": "lease-1",
        "job": "job-1",
        "worker": "host:1",
        "region": "eu-west",
    }
    assert data["fetched_at"] == "2024-03-05T10:00:00+00:00"
    assert data["processed_at"].endswith("+00:00")
    assert data["record_type"] == "price"
    assert data["content_hash"] == hashlib.sha256(canonical_json(fields).encode()).hexdigest()
    assert len(bytes.fromhex(data["content_key"])) == 16
    assert "embedding" not in data  # prices want none
    json.dumps(data)  # ready for a sink as it is


def test_fetch_task_files_and_job_results() -> None:
    file_item = {
        "job_id": "j1", "channel_id": "c1", "source_type": "FTP", "path": "a/b.csv",
        "size": 10, "sha256": "AB" * 32, "local_path": "/tmp/hydra-fetch-x/0",
        "outcome": "uploaded", "error": "",
    }  # fmt: skip
    result_item = {
        "job_id": "j1", "channel_id": "c1", "source_type": "ftp", "status": "success",
        "message": "1 new", "files_processed": 1, "files_uploaded": 1,
        "execution_time_seconds": 0.25, "metadata": {"attempt": 0}, "error": "",
    }  # fmt: skip
    batch = [
        ("s|1-0", raw_record("fetch_task", file_item, key="j1/a/b.csv")),
        ("s|2-0", raw_record("fetch_task", result_item, key="j1/result")),
    ]
    [outcome] = run(embedded(), [batch])
    file_row, result_row = (row.data for row in outcome.rows)
    assert file_row["record_type"] == "file"
    assert file_row["fields"]["sha256"] == "ab" * 32 and file_row["fields"]["source_type"] == "ftp"
    assert "local_path" not in file_row["fields"]  # a worker's temp file means nothing here
    assert result_row["record_type"] == "job_result"
    assert result_row["fields"]["execution_time_seconds"] == "0.25"
    assert result_row["fields"]["metadata"] == {"attempt": 0}


def test_web_items_are_free_form() -> None:
    item = {
        "productName": "<b>Apple iPhone&nbsp;15</b> 128gb",
        "Price": "Call for price",
        "URL": "https://shop.example/p/1?q=a b",
        "Brand": "apple inc",
        "Colour": " <i>red</i> ",
        "category": ["Phones", "<b>Smartphones</b>"],
    }
    [outcome] = run(embedded(), [[("s|1-0", raw_record("web", item))]])
    data = outcome.rows[0].data
    assert data["fields"]["title"] == "Apple iPhone 15 128 GB"
    assert data["fields"]["brand"] == "Apple"
    assert data["fields"]["url"] == "https://shop.example/p/1?q=a%20b"
    assert data["fields"]["price"] is None
    assert data["unparsed"] == {"price": "Call for price"}
    assert data["fields"]["category"] == "Phones; Smartphones"
    assert data["fields"]["extra"] == {"colour": "red"}
    empty = raw_record("web", {"colour": "red"})
    [outcome] = run(embedded(), [[("s|2-0", empty)]])
    assert outcome.failures[0].reason == "missing_field"


def test_duplicates_within_a_run() -> None:
    first = [("s|1-0", price("101")), ("s|2-0", price("101", amount="12.50"))]
    second = [
        ("s|3-0", price("101", amount="$12.5")),  # the same content, written otherwise
        ("s|1-0", price("101")),  # the same entry again (its batch retried): not a duplicate
        ("s|4-0", price("101", amount=13)),  # changed: new content
        ("s|5-0", web("The iPhone 15 - Red", key="w1")),
        ("s|6-0", web("iphone 15 red", key="w2")),  # key text: case, punctuation, stop words
    ]
    one, two = run(embedded(), [first, second])
    assert [r.entry_id for r in one.rows] == ["s|1-0"] and one.duplicates == ["s|2-0"]
    assert [r.entry_id for r in two.rows] == ["s|1-0", "s|4-0", "s|5-0"]
    assert two.duplicates == ["s|3-0", "s|6-0"]


def test_dedup_window_expires_and_released_rows_come_back() -> None:
    clock = [1000.0]
    processor = embedded(dedup_window_seconds=60)
    processor.dedup.clock = lambda: clock[0]

    async def scenario() -> list[list[str]]:
        seen = []
        async with processor:
            for entry, later in (("s|1-0", 59), ("s|2-0", 2), ("s|3-0", 0), ("s|4-0", 0)):
                outcome = await processor.process([(entry, price("101"))])
                seen.append([row.entry_id for row in outcome.rows])
                clock[0] += later  # 59 s: within the window; 2 s more: past it
                if entry == "s|3-0":
                    await processor.release(outcome.rows)  # a sink refused it for good
        return seen

    assert asyncio.run(scenario()) == [["s|1-0"], [], ["s|3-0"], ["s|4-0"]]


def test_local_memory_is_bounded() -> None:
    processor = embedded(dedup_local_max_keys=3)
    batch = [(f"s|{i}-0", price(str(i))) for i in range(10)]
    run(processor, [batch])
    assert len(processor.dedup) == 3


def test_embeddings_once_per_batch_only_where_wanted() -> None:
    embedder = FakeEmbedder()
    processor = DataProcessor(EtlSettings(), embedder=embedder)
    batch = [
        ("s|1-0", web("Red apple", key="a", description="<p>Crisp</p>")),
        ("s|2-0", price("101")),
        ("s|3-0", web("red apple", key="b")),  # a duplicate: not embedded
        ("s|4-0", "garbage"),
        ("s|5-0", web("Green pear", key="c")),
    ]
    [outcome] = run(processor, [batch])
    assert embedder.calls == [["Red apple. Crisp", "Green pear"]]
    vectors = {row.entry_id: row.data.get("embedding") for row in outcome.rows}
    assert vectors["s|2-0"] is None and vectors["s|1-0"] and vectors["s|5-0"]
    assert outcome.rows[0].data["embedding_model"] == "fake"
    assert outcome.counters["embedded"] == 2
    embedder = FakeEmbedder()
    off = DataProcessor(EtlSettings(embeddings=False), embedder=embedder)
    [outcome] = run(off, [batch])
    assert embedder.calls == [] and all("embedding" not in r.data for r in outcome.rows)


def test_the_core_does_not_import_the_model_stack() -> None:
    """Embeddings on, but a batch that wants none never imports torch."""
    code = f"""
import asyncio, sys
from crawlers.etl import DataProcessor
async def main():
    async with DataProcessor() as processor:
        outcome = await processor.process([("s|1-0", {price("101")!r})])
    assert outcome.counters["rows"] == 1, outcome
asyncio.run(main())
heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=120)


def test_registry_extra_overrides_and_removes() -> None:
    assert set(build_extractors()) == set(EXTRACTORS_BASE)
    extractors = build_extractors({"boom": EXPLODING, "web": None})
    assert "web" not in extractors and isinstance(extractors["boom"], Exploding)
    with pytest.raises(EtlError, match="cannot be loaded"):
        build_extractors({"x": "crawlers.etl.nowhere.Nothing"})
    with pytest.raises(EtlError, match="not an Extractor"):
        build_extractors({"x": "crawlers.etl.settings.EtlSettings"})
    with pytest.raises(EtlError):  # at construction: a typo fails before any I/O
        DataProcessor(EtlSettings(extractors={"x": "no.such.Thing"}))


def test_settings_are_checked_and_map_from_the_config() -> None:
    with pytest.raises(EtlSettingsError, match="dedup_window_seconds"):
        EtlSettings(dedup_window_seconds=-1)
    with pytest.raises(EtlSettingsError, match="default_currency"):
        EtlSettings(default_currency="usd")
    config = SimpleNamespace(
        etl_dedup_window_seconds=30.0,
        etl_embeddings=False,
        etl_dictionaries_dir="",
        etl_extractors={"boom": EXPLODING},
        redis_url="",
    )
    settings = EtlSettings.from_config(config)
    assert settings.dedup_window_seconds == 30.0 and settings.embeddings is False
    assert settings.dictionaries_dir == PACKAGED_DICTIONARIES  # empty: the packaged files
    processor = DataProcessor.from_config(config)
    assert processor.embedder is None and "boom" in processor.extractors


def test_processing_before_open_is_refused() -> None:
    with pytest.raises(EtlError, match="not open"):
        asyncio.run(embedded().process([("s|1-0", price("1"))]))
