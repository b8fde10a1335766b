"""The BigQuery sink and ID reader against a real emulator (``local-bigquery``), no mocks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from crawlers.items import PriceItem
from crawlers.sandbox import SandboxServer
from crawlers.sinks import Rejection, Row, SinkError
from crawlers.sinks.bigquery import BigQuerySink, item_columns
from crawlers.warehouse import read_ids, read_ids_async
from crawlers.warehouse.bigquery_ids import id_query
from tests.bqfixtures import BigQueryEmulator
from tests.conftest import read_summary, run_worker

pytestmark = pytest.mark.integration

PROJECT = "test-proj"


@pytest.fixture
def client(bigquery_emulator: BigQueryEmulator) -> Iterator[bigquery.Client]:
    bq = bigquery_emulator.client()
    yield bq
    bq.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def dataset(client: bigquery.Client) -> str:
    """A fresh dataset in the shared emulator."""
    name = f"ds_{uuid.uuid4().hex[:12]}"
    client.create_dataset(f"{PROJECT}.{name}")
    return name


def price_row(id_: str, run_id: str = "r1", **changes: Any) -> Row:
    item = PriceItem(
        run_id=run_id,
        batch_id="b1",
        id=id_,
        data={"id": id_, "price": 1.5, "tags": ["a", "b"]},
        fetched_at="2026-12-01T10:00:00+00:00",
        region="eu-west",
        attempt=0,
    )
    data = {**dataclasses.asdict(item), **changes}
    return Row(f"{run_id}/{id_}", data, owner="lease-1")


def sink_for(
    emulator: BigQueryEmulator, dataset: str, table: str = "prices", **options: Any
) -> BigQuerySink:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    uri = f"bigquery://{PROJECT}/{dataset}.{table}" + (f"?{query}" if query else "")
    return BigQuerySink.from_uri(uri, endpoint=emulator.endpoint)


def stored(client: bigquery.Client, dataset: str, table: str = "prices") -> list[dict[str, Any]]:
    sql = f"SELECT * FROM `{PROJECT}.{dataset}.{table}` ORDER BY run_id, id"
    return [dict(row.items()) for row in client.query(sql).result()]


def test_sink_creates_the_table_and_streams_rows_in_batches(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    sink = sink_for(bigquery_emulator, dataset, batch_rows=3, flush_seconds=60)
    assert sink.describe() == f"bigquery://{PROJECT}/{dataset}.prices"

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([price_row("1"), price_row("2")])
        assert not sink.wants_flush()  # 2 rows, young buffer
        await sink.write([price_row(str(n)) for n in range(3, 8)])
        assert sink.wants_flush()
        rejected = await sink.flush()
        assert sink.pending_rows == 0
        await sink.close()
        return rejected

    assert asyncio.run(scenario()) == []
    table = client.get_table(f"{PROJECT}.{dataset}.prices")
    assert [(f.name, f.field_type) for f in table.schema] == [
        ("run_id", "STRING"),
        ("batch_id", "STRING"),
        ("id", "STRING"),
        ("data", "JSON"),
        ("fetched_at", "STRING"),
        ("region", "STRING"),
        ("attempt", "INTEGER"),
    ]
    rows = stored(client, dataset)
    assert sorted(row["id"] for row in rows) == [str(n) for n in range(1, 8)]
    first = next(row for row in rows if row["id"] == "1")
    data = first["data"] if isinstance(first["data"], dict) else json.loads(first["data"])
    assert data == {"id": "1", "price": 1.5, "tags": ["a", "b"]}
    assert first["attempt"] == 0 and first["region"] == "eu-west"


def test_flush_seconds_asks_for_a_flush(bigquery_emulator: BigQueryEmulator, dataset: str) -> None:
    sink = sink_for(bigquery_emulator, dataset, batch_rows=1000, flush_seconds=0.2)

    async def scenario() -> None:
        await sink.write([price_row("1")])
        assert not sink.wants_flush()
        await asyncio.sleep(0.3)
        assert sink.wants_flush()

    asyncio.run(scenario())  # no open(): the buffer's cadence needs no server


def test_a_redelivered_row_is_stored_once(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    sink = sink_for(bigquery_emulator, dataset)

    async def scenario() -> None:
        await sink.open()
        await sink.write([price_row("1"), price_row("2")])
        assert await sink.flush() == []
        # the same items fetched again after a crash: same keys, later timestamps
        await sink.write([price_row("1", fetched_at="2026-12-01T11:00:00+00:00")])
        await sink.write([price_row("2"), price_row("2"), price_row("3")])
        assert await sink.flush() == []
        await sink.close()

    asyncio.run(scenario())
    assert sorted(row["id"] for row in stored(client, dataset)) == ["1", "2", "3"]


def test_rows_bigquery_refuses_come_back_and_the_rest_is_stored(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    sink = sink_for(bigquery_emulator, dataset)
    wrong_type = price_row("bad", attempt="not-a-number")
    unknown_field = price_row("extra", surprise=1)
    unserialisable = price_row("nan", data={"price": float("nan")})

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([price_row("1"), wrong_type, unknown_field, unserialisable])
        await sink.write([price_row("2")])
        rejected = await sink.flush()
        assert sink.pending_rows == 0
        await sink.close()
        return rejected

    rejected = {rejection.row.data["id"]: rejection for rejection in asyncio.run(scenario())}
    assert set(rejected) == {"bad", "extra", "nan"}
    assert rejected["bad"].row is wrong_type  # the row itself, with its owner
    assert rejected["bad"].error.startswith("BigQuery: attempt: ")
    assert "not-a-number" in rejected["bad"].error and "(invalid)" in rejected["bad"].error
    assert "surprise" in rejected["extra"].error
    assert "not serialisable" in rejected["nan"].error
    assert sorted(row["id"] for row in stored(client, dataset)) == ["1", "2"]


def test_requests_keep_to_the_byte_budget_and_long_keys_still_dedup(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    sink = sink_for(bigquery_emulator, dataset, batch_bytes=4096)
    long_id = "x" * 300  # a key of over 128 characters becomes its SHA-256
    rows = [price_row(str(n), data={"blob": "é" * 200}) for n in range(20)]
    too_big = price_row("huge", data={"blob": "y" * 5000})

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([*rows, too_big, price_row(long_id)])
        rejected = await sink.flush()
        await sink.write([price_row(long_id)])
        rejected += await sink.flush()
        await sink.close()
        return rejected

    (rejection,) = asyncio.run(scenario())
    assert rejection.row is too_big and "exceeds batch_bytes=4096" in rejection.error
    ids = sorted(row["id"] for row in stored(client, dataset))
    assert ids == sorted([str(n) for n in range(20)] + [long_id])


def test_a_missing_dataset_is_named(bigquery_emulator: BigQueryEmulator) -> None:
    sink = sink_for(bigquery_emulator, "no_such_dataset")
    with pytest.raises(SinkError, match=r"dataset test-proj\.no_such_dataset does not exist"):
        asyncio.run(sink.open())


def test_an_existing_table_without_the_item_columns_is_refused(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    schema = [bigquery.SchemaField("id", "STRING"), bigquery.SchemaField("run_id", "STRING")]
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.narrow", schema=schema))
    sink = sink_for(bigquery_emulator, dataset, table="narrow")
    with pytest.raises(SinkError, match="without column"):
        asyncio.run(sink.open())


def test_unreachable_bigquery_raises_keeps_rows_and_stores_them_after_restart(
    tmp_path: Path, bigquery_duckdb_home: Path
) -> None:
    emulator = BigQueryEmulator(tmp_path / "emulator", bigquery_duckdb_home).start()
    try:
        bq = emulator.client()
        bq.create_dataset(f"{PROJECT}.ds")
        sink = sink_for(emulator, "ds", timeout_seconds=2)

        async def before() -> None:
            await sink.open()
            await sink.write([price_row("1")])
            assert await sink.flush() == []
            await sink.write([price_row("2"), price_row("bad", attempt="x"), price_row("3")])

        loop = asyncio.new_event_loop()
        loop.run_until_complete(before())
        emulator.stop()
        started = time.monotonic()
        with pytest.raises(SinkError, match="kept for the next flush"):
            loop.run_until_complete(sink.flush())
        assert time.monotonic() - started < 20  # a short retry deadline, not the client's 600 s
        assert sink.pending_rows == 3
        with pytest.raises(SinkError):  # still down: still kept
            loop.run_until_complete(sink.flush())
        assert sink.pending_rows == 3
        emulator.start()
        rejected = loop.run_until_complete(sink.flush())
        assert [rejection.row.data["id"] for rejection in rejected] == ["bad"]
        assert sink.pending_rows == 0
        loop.run_until_complete(sink.close())
        loop.close()
        bq = emulator.client()
        assert sorted(row["id"] for row in stored(bq, "ds")) == ["1", "2", "3"]
    finally:
        emulator.stop()


def test_schema_from_another_item_class() -> None:
    assert item_columns(PriceItem)["data"] == "JSON"
    sink = BigQuerySink.from_uri(
        "bigquery://p/d.files?schema=crawlers.items.FetchedFileItem", endpoint="http://x"
    )
    assert sink.columns["size"] == "INT64" and sink.columns["path"] == "STRING"


@pytest.mark.parametrize(
    "uri",
    [
        "bigquery://test-proj/ds.t`; DROP TABLE x; --",
        "bigquery://test-proj/ds`.t",
        "bigquery://test proj/ds.t",
        "bigquery://test-proj/ds",
        "bigquery://test-proj/ds.t?batch_size=10",  # misspelt option
        "bigquery://test-proj/ds.t?schema=os.getcwd",
    ],
)
def test_bad_sink_uris_are_refused_without_a_request(uri: str) -> None:
    with pytest.raises(ValueError):
        BigQuerySink.from_uri(uri, endpoint="http://127.0.0.1:1")


# -- the ID reader -----------------------------------------------------------


@pytest.fixture
def id_table(client: bigquery.Client, dataset: str) -> str:
    """2,500 distinct IDs (as integers), some twice, and a NULL."""
    schema = [bigquery.SchemaField("tcg_id", "INT64"), bigquery.SchemaField("name", "STRING")]
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.cards", schema=schema))
    rows: list[dict[str, Any]] = [{"tcg_id": n, "name": f"card {n}"} for n in range(2500)]
    rows += [{"tcg_id": n, "name": "again"} for n in range(0, 2500, 100)]
    rows.append({"tcg_id": None, "name": "no id"})
    for start in range(0, len(rows), 1000):
        assert (
            client.insert_rows_json(f"{PROJECT}.{dataset}.cards", rows[start : start + 1000]) == []
        )
    return dataset


def test_read_ids_pages_through_distinct_values(
    bigquery_emulator: BigQueryEmulator, id_table: str
) -> None:
    uri = f"bigquery://{PROJECT}/{id_table}.cards?column=tcg_id"
    pages = list(read_ids(uri, endpoint=bigquery_emulator.endpoint, page_size=1000))
    assert [len(page) for page in pages] == [1000, 1000, 500]
    ids = [id_ for page in pages for id_ in page]
    assert len(ids) == len(set(ids)) == 2500
    assert set(ids) == {str(n) for n in range(2500)}
    assert all(isinstance(id_, str) for id_ in ids)


def test_read_ids_from_a_query(bigquery_emulator: BigQueryEmulator, id_table: str) -> None:
    sql = f"SELECT name FROM {id_table}.cards WHERE tcg_id < 3 ORDER BY tcg_id, name"
    uri = f"bigquery://{PROJECT}?query={sql}"
    pages = list(read_ids(uri, endpoint=bigquery_emulator.endpoint, page_size=2))
    assert [len(page) for page in pages] == [2, 2]
    assert [id_ for page in pages for id_ in page] == ["again", "card 0", "card 1", "card 2"]


def test_read_ids_async(bigquery_emulator: BigQueryEmulator, id_table: str) -> None:
    uri = f"bigquery://{PROJECT}/{id_table}.cards?column=tcg_id"

    async def collect() -> list[list[str]]:
        return [page async for page in read_ids_async(uri, bigquery_emulator.endpoint, 2000)]

    pages = asyncio.run(collect())
    assert [len(page) for page in pages] == [2000, 500]


@pytest.mark.parametrize(
    "uri",
    [
        "bigquery://test-proj/ds.cards?column=tcg_id) FROM x; DROP TABLE y; --",
        "bigquery://test-proj/ds.cards?column=tcg`id",
        "bigquery://test-proj/ds.cards`; DELETE FROM z; --?column=id",
        "bigquery://test-proj/ds;x.cards?column=id",
        "bigquery://test;proj/ds.cards?column=id",
        "bigquery://test-proj?query=DELETE FROM ds.cards WHERE true",
        "bigquery://test-proj?query=SELECT 1; DROP TABLE ds.cards",
        "bigquery://test-proj?query=",
        "bigquery://test-proj/ds.cards",
        "bigquery://test-proj/ds.cards?column=id&limit=3",
        "file:///etc/passwd",
    ],
)
def test_injection_looking_uris_are_refused_before_any_request(uri: str) -> None:
    with pytest.raises(ValueError):
        id_query(uri)
    with pytest.raises(ValueError):
        next(read_ids(uri, endpoint="http://127.0.0.1:1"))


# -- a real worker -----------------------------------------------------------


def test_prices_worker_streams_one_row_per_id_into_bigquery(
    tmp_path: Path,
    bigquery_emulator: BigQueryEmulator,
    client: bigquery.Client,
    dataset: str,
) -> None:
    ids = [f"p{n}" for n in range(60)]
    with SandboxServer(refuse_rate=0.05, seed=5) as sandbox:
        run_worker(
            "-a", "ids=" + ",".join(ids), "-a", f"url_template={sandbox.url_template}",
            HYDRA_SINKS=f"bigquery://{PROJECT}/{dataset}.prices?batch_rows=25",
            HYDRA_BIGQUERY_ENDPOINT=bigquery_emulator.endpoint,
            HYDRA_BATCH_MAX_ATTEMPTS=50,
            HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
            HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
        )  # fmt: skip
    rows = stored(client, dataset)
    assert sorted(row["id"] for row in rows) == sorted(ids)  # each exactly once
    assert {row["region"] for row in rows} == {"default"}
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/ids_fetched"] == len(ids)


def test_workers_starting_together_both_open_the_table(
    bigquery_emulator: BigQueryEmulator, client: bigquery.Client, dataset: str
) -> None:
    """Two workers racing to create the same table: the loser looks again, not crash."""
    sinks = [sink_for(bigquery_emulator, dataset, table="raced") for _ in range(4)]

    async def scenario() -> None:
        await asyncio.gather(*(sink.open() for sink in sinks))
        for sink in sinks:
            await sink.close()

    asyncio.run(scenario())
    assert client.get_table(f"{PROJECT}.{dataset}.raced").schema
