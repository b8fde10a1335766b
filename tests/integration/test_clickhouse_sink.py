"""The ClickHouse sink against a real server (Debian's clickhouse-server 18.16), no mocks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client

from crawlers.items import PriceItem
from crawlers.sandbox import SandboxServer
from crawlers.sinks import Rejection, Row, SinkError
from crawlers.sinks.clickhouse import ClickHouseSink
from tests.clickhousefixtures import PASSWORD, USER, ClickHouseServer, clickhouse
from tests.conftest import read_summary, run_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def client(clickhouse_server: ClickHouseServer) -> Iterator[Client]:
    ch = clickhouse_server.client()
    yield ch
    ch.disconnect()


@pytest.fixture
def database(client: Client) -> str:
    """A fresh database on the shared server."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    client.execute(f"CREATE DATABASE {name}")
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
    server: ClickHouseServer, database: str, table: str = "prices", **options: Any
) -> ClickHouseSink:
    return ClickHouseSink.from_uri(server.uri(f"{database}.{table}", **options))


def final_rows(client: Client, database: str, table: str = "prices") -> dict[str, dict[str, Any]]:
    """key -> the row's data, as a reader sees them (FINAL: one row per key)."""
    rows = client.execute(f"SELECT key, data FROM {database}.{table} FINAL")
    return {key: json.loads(data) for key, data in rows}


def counts(client: Client, database: str, table: str = "prices") -> tuple[int, int]:
    """(rows stored, rows counted under FINAL)."""
    ((raw,),) = client.execute(f"SELECT count() FROM {database}.{table}")
    ((final,),) = client.execute(f"SELECT count() FROM {database}.{table} FINAL")
    return raw, final


def test_sink_creates_its_table_and_inserts_rows_in_batches(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database, batch_rows=3, flush_seconds=60)
    assert (
        sink.describe() == f"clickhouse://127.0.0.1:{clickhouse_server.tcp_port}/{database}.prices"
    )

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([price_row("1"), price_row("2")])
        assert not sink.wants_flush()  # 2 rows, young buffer
        await sink.write([price_row(str(n)) for n in range(3, 8)])
        assert sink.wants_flush()
        rejected = await sink.flush()
        assert sink.pending_rows == 0 and not sink.wants_flush()
        await sink.close()
        return rejected

    assert asyncio.run(scenario()) == []
    ((ddl,),) = client.execute(f"SHOW CREATE TABLE {database}.prices")
    assert "ENGINE = ReplacingMergeTree(version) ORDER BY key" in ddl
    assert [
        tuple(column[:2]) for column in client.execute(f"DESCRIBE TABLE {database}.prices")
    ] == [
        ("key", "String"),
        ("version", "UInt64"),
        ("inserted_at", "DateTime"),
        ("data", "String"),
    ]
    rows = final_rows(client, database)
    assert sorted(rows) == [f"r1/{n}" for n in range(1, 8)]
    assert rows["r1/1"] == price_row("1").data  # the whole row, as JSON
    assert rows["r1/1"]["data"] == {"id": "1", "price": 1.5, "tags": ["a", "b"]}
    ((inserted_at,),) = client.execute(f"SELECT min(inserted_at) FROM {database}.prices")
    assert inserted_at.year >= 2026


def test_rows_written_again_after_a_crash_count_once_under_final(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database)

    async def scenario() -> None:
        await sink.open()
        await sink.write([price_row(str(n)) for n in range(50)])
        assert await sink.flush() == []
        # the same items fetched again after a crash: same keys; one now says otherwise
        await sink.write([price_row(str(n)) for n in range(50)])
        await sink.write([price_row("7", region="us-east"), price_row("50")])
        assert await sink.flush() == []
        await sink.close()

    asyncio.run(scenario())
    assert counts(client, database) == (102, 51)  # both copies stored, counted once
    rows = final_rows(client, database)
    assert rows["r1/7"]["region"] == "us-east"  # the latest write wins
    assert rows["r1/8"]["region"] == "eu-west"
    # what FINAL reads is what the merge keeps
    client.execute(f"OPTIMIZE TABLE {database}.prices FINAL")
    assert counts(client, database) == (51, 51)


def test_a_row_that_is_not_json_is_rejected_and_the_rest_stored(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database)
    nan = price_row("nan", data={"price": float("nan")})

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([price_row("1"), nan, price_row("2")])
        rejected = await sink.flush()
        await sink.close()
        return rejected

    rejected = asyncio.run(scenario())
    assert [(r.row.key, r.row.owner) for r in rejected] == [("r1/nan", "lease-1")]
    assert "JSON" in rejected[0].error
    assert sorted(final_rows(client, database)) == ["r1/1", "r1/2"]


def test_batches_larger_than_batch_rows_go_in_several_inserts(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database, batch_rows=100)

    async def scenario() -> None:
        await sink.open()
        for n in range(1050):
            await sink.write([price_row(str(n))])
        assert await sink.flush() == []
        await sink.close()

    asyncio.run(scenario())
    assert counts(client, database) == (1050, 1050)
    ((parts,),) = client.execute(
        "SELECT count() FROM system.parts WHERE database = %(db)s AND table = 'prices'",
        {"db": database},
    )
    assert parts >= 2  # 11 inserts (merges may have joined some parts since)


def test_close_flushes_what_is_still_buffered(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database)

    async def scenario() -> None:
        await sink.open()
        await sink.write([price_row("1"), price_row("2")])
        await sink.close()

    asyncio.run(scenario())
    assert sorted(final_rows(client, database)) == ["r1/1", "r1/2"]


def test_a_missing_database_is_named(clickhouse_server: ClickHouseServer) -> None:
    sink = sink_for(clickhouse_server, "no_such_db")
    with pytest.raises(SinkError, match="database no_such_db does not exist"):
        asyncio.run(sink.open())


def test_a_dropped_table_is_created_again_by_the_next_flush(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sink = sink_for(clickhouse_server, database)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sink.open())
        loop.run_until_complete(sink.write([price_row("1")]))
        assert loop.run_until_complete(sink.flush()) == []
        client.execute(f"DROP TABLE {database}.prices")
        loop.run_until_complete(sink.write([price_row("2")]))
        with pytest.raises(SinkError, match="1 rows kept"):
            loop.run_until_complete(sink.flush())
        assert sink.pending_rows == 1
        assert loop.run_until_complete(sink.flush()) == []
        loop.run_until_complete(sink.close())
    finally:
        loop.close()
    assert sorted(final_rows(client, database)) == ["r1/2"]


def test_sinks_opening_together_share_one_table(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    sinks = [sink_for(clickhouse_server, database, table="raced") for _ in range(4)]

    async def scenario() -> None:
        await asyncio.gather(*(sink.open() for sink in sinks))
        for number, sink in enumerate(sinks):
            await sink.write([price_row(str(number))])
        assert await asyncio.gather(*(sink.flush() for sink in sinks)) == [[]] * 4
        for sink in sinks:
            await sink.close()

    asyncio.run(scenario())
    assert counts(client, database, "raced") == (4, 4)


# -- the server going away ---------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of this test's own, to kill and restart."""
    server = clickhouse(tmp_path / "clickhouse").start()
    yield server
    server.kill()


def test_server_killed_between_write_and_flush_loses_and_doubles_nothing(
    own_server: ClickHouseServer,
) -> None:
    admin = own_server.client()
    admin.execute("CREATE DATABASE hydra")
    admin.disconnect()
    sink = sink_for(own_server, "hydra", retry_seconds=0.1)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sink.open())
        loop.run_until_complete(sink.write([price_row(str(n)) for n in range(100)]))
        assert loop.run_until_complete(sink.flush()) == []
        loop.run_until_complete(sink.write([price_row(str(n)) for n in range(100, 250)]))
        own_server.kill()
        started = time.monotonic()
        with pytest.raises(SinkError, match="150 rows kept for the next flush"):
            loop.run_until_complete(sink.flush())
        assert time.monotonic() - started < 5
        assert sink.pending_rows == 150
        loop.run_until_complete(sink.write([price_row(str(n)) for n in range(250, 300)]))
        with pytest.raises(SinkError):  # still down: still kept, new rows too
            loop.run_until_complete(sink.flush())
        assert sink.pending_rows == 200
        own_server.start()  # same port, same data directory
        assert loop.run_until_complete(sink.flush()) == []
        assert sink.pending_rows == 0
        loop.run_until_complete(sink.close())
    finally:
        loop.close()
    admin = own_server.client()
    assert counts(admin, "hydra") == (300, 300)  # none lost, none stored twice
    assert sorted(final_rows(admin, "hydra")) == sorted(f"r1/{n}" for n in range(300))
    admin.disconnect()


def test_a_hung_server_times_out_and_the_rows_go_in_once_it_answers(
    own_server: ClickHouseServer,
) -> None:
    admin = own_server.client()
    admin.execute("CREATE DATABASE hydra")
    sink = sink_for(own_server, "hydra", timeout_seconds=1, retry_seconds=0)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(sink.open())
        loop.run_until_complete(sink.write([price_row("1")]))
        assert loop.run_until_complete(sink.flush()) == []
        loop.run_until_complete(sink.write([price_row("2"), price_row("3")]))
        own_server.pause()
        started = time.monotonic()
        try:
            with pytest.raises(SinkError, match="2 rows kept"):
                loop.run_until_complete(sink.flush())
        finally:
            own_server.resume()
        assert time.monotonic() - started < 10
        assert sink.pending_rows == 2
        assert loop.run_until_complete(sink.flush()) == []
        loop.run_until_complete(sink.close())
    finally:
        loop.close()
    assert counts(admin, "hydra") == (3, 3)
    admin.disconnect()


def test_an_unreachable_server_at_open_is_a_sink_error() -> None:
    sink = ClickHouseSink.from_uri("clickhouse://127.0.0.1:1/db.t?timeout_seconds=1")
    with pytest.raises(SinkError, match="cannot open the table: NetworkError"):
        asyncio.run(sink.open())


# -- a table of the user's own -----------------------------------------------

TYPED_TABLE = """
CREATE TABLE {database}.typed (
    key String,
    version UInt64,
    run_id String,
    id UInt32,
    price Nullable(Float64),
    tags Array(String),
    fetched_at DateTime,
    day Date,
    attempt UInt8,
    state Enum8('ok' = 1, 'stopped' = 2),
    amount Decimal(9, 2),
    data String,
    pair Tuple(UInt8, String),
    note String DEFAULT 'none'
) ENGINE = ReplacingMergeTree(version) ORDER BY (run_id, id)
"""


def typed_row(id_: int, **changes: Any) -> Row:
    data: dict[str, Any] = {
        "run_id": "r1",
        "id": str(id_),  # a numeric string, as scraped: converted for UInt32
        "price": 2.5,
        "tags": ["x", "y"],
        "fetched_at": "2026-12-01T10:00:00+00:00",
        "day": "2026-12-01",
        "attempt": 1,
        "state": "ok",
        "amount": "12.345",
        "data": {"raw": True},  # a dict for a String column: stored as JSON
        "pair": (1, "a"),
        "unknown": "dropped",  # no such column
    }
    data.update(changes)
    return Row(f"r1/{id_}", data, owner="lease-1")


def test_an_existing_typed_table_gets_each_field_in_its_column(
    clickhouse_server: ClickHouseServer,
    client: Client,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client.execute(TYPED_TABLE.format(database=database))
    sink = sink_for(clickhouse_server, database, table="typed")
    bad = {
        2: typed_row(2, id="two"),  # not a number
        3: typed_row(3, attempt=300),  # out of range for UInt8 (the driver would wrap it)
        4: typed_row(4, state="lost"),  # not in the enum
        5: typed_row(5, fetched_at="yesterday"),  # not a date
        6: typed_row(6, day="1960-01-01"),  # before Date's range
        7: typed_row(7, pair=("x", "a")),  # the driver's own refusal: found by splitting
    }
    rows = [typed_row(1), *bad.values(), typed_row(8, price=None), typed_row(9, amount=None)]

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write(rows)
        rejected = await sink.flush()
        await sink.close()
        return rejected

    with caplog.at_level(logging.WARNING, logger="crawlers.sinks.clickhouse"):
        rejected = asyncio.run(scenario())
    assert sorted(r.row.key for r in rejected) == sorted(r.key for r in bad.values())
    errors = {r.row.key: r.error for r in rejected}
    assert "column id (UInt32)" in errors["r1/2"]
    assert "out of range" in errors["r1/3"]
    assert "'lost' is not one of" in errors["r1/4"]
    assert "outside the range of Date" in errors["r1/6"]
    assert errors["r1/7"].startswith("ClickHouse refused the row:")
    assert "no column for field(s) unknown" in caplog.text
    stored = client.execute(
        f"SELECT key, id, price, tags, toUnixTimestamp(fetched_at), day, attempt, state, "
        f"amount, data, pair, note, version > 0 FROM {database}.typed FINAL ORDER BY id"
    )
    assert [row[0] for row in stored] == ["r1/1", "r1/8", "r1/9"]
    first = stored[0]
    assert first[1:4] == (1, 2.5, ["x", "y"])
    assert first[4] == 1796119200  # 2026-12-01T10:00:00Z
    assert str(first[5]) == "2026-12-01" and first[6:8] == (1, "ok")
    assert str(first[8]) == "12.34"  # to 2 places, half to even
    assert json.loads(first[9]) == {"raw": True}
    assert first[10:13] == ((1, "a"), "none", 1)  # no field: the column's default
    assert stored[1][2] is None  # NULL in a Nullable column
    assert stored[2][8] == 0  # None in a non-Nullable column: the type's default


def test_a_table_with_no_column_for_the_rows_rejects_them(
    clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    client.execute(f"CREATE TABLE {database}.other (n UInt8) ENGINE = MergeTree ORDER BY n")
    sink = sink_for(clickhouse_server, database, table="other")

    async def scenario() -> list[Rejection]:
        await sink.open()
        await sink.write([price_row("1")])
        rejected = await sink.flush()
        await sink.close()
        return rejected

    (rejection,) = asyncio.run(scenario())
    assert "none of the row's fields is a column" in rejection.error


# -- credentials -------------------------------------------------------------


def test_the_password_is_never_in_describe_errors_or_logs(
    clickhouse_server: ClickHouseServer,
    client: Client,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uri = clickhouse_server.uri(f"{database}.prices", user=USER, password=PASSWORD)
    sink = ClickHouseSink.from_uri(uri)
    wrong = ClickHouseSink.from_uri(uri.replace(PASSWORD, PASSWORD + "x"))
    unreachable = ClickHouseSink.from_uri(
        f"clickhouse://{USER}:{PASSWORD}@127.0.0.1:1/{database}.prices?timeout_seconds=1"
    )
    messages: list[str] = []

    async def scenario() -> None:
        await sink.open()
        await sink.write([price_row("1")])
        assert await sink.flush() == []
        await sink.close()
        for failing in (wrong, unreachable):
            try:
                await failing.open()
            except SinkError as exc:
                messages.append(str(exc))
            await failing.write([price_row("2")])
            try:
                await failing.flush()
            except SinkError as exc:
                messages.append(str(exc))
            await failing.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert sorted(final_rows(client, database)) == ["r1/1"]
    assert len(messages) == 4 and "Wrong password" in messages[0]
    shown = [sink.describe(), sink.uri, wrong.describe(), unreachable.describe(), *messages]
    assert f"clickhouse://{USER}@127.0.0.1" in sink.describe()
    for text in [*shown, caplog.text]:
        assert PASSWORD not in text


# -- a real worker -----------------------------------------------------------


def test_prices_worker_stores_one_row_per_id_in_clickhouse(
    tmp_path: Path, clickhouse_server: ClickHouseServer, client: Client, database: str
) -> None:
    ids = [f"p{n}" for n in range(60)]
    uri = clickhouse_server.uri(f"{database}.prices", user=USER, password=PASSWORD)
    with SandboxServer(refuse_rate=0.05, seed=5) as sandbox:
        log = run_worker(
            "-a", "ids=" + ",".join(ids), "-a", f"url_template={sandbox.url_template}",
            HYDRA_SINKS=uri,
            HYDRA_CLICKHOUSE_BATCH_ROWS=25,
            HYDRA_BATCH_MAX_ATTEMPTS=50,
            HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
            HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
        )  # fmt: skip
    rows = final_rows(client, database)
    assert sorted(row["id"] for row in rows.values()) == sorted(ids)
    raw, final = counts(client, database)
    assert final == len(ids) and raw >= final
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/ids_fetched"] == len(ids)
    assert PASSWORD not in log
    assert PASSWORD not in (tmp_path / "summary.json").read_text()
