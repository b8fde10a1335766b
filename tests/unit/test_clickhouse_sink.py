"""The ClickHouse sink without a server: URIs, settings, cadence, value conversion."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import re
import uuid
from typing import Any

import pytest
from clickhouse_driver import errors as ch_errors

from crawlers.sinks import Row, SinkError, build_sink
from crawlers.sinks.clickhouse import (
    ClickHouseSink,
    _brief,
    _classify,
    _split_args,
    converter,
    type_default,
)
from tests.unit.helpers import price_crawler


def test_uri_parts_and_defaults() -> None:
    sink = ClickHouseSink.from_uri("clickhouse://ch.example:9001/analytics.prices")
    assert (sink.host, sink.port, sink.database, sink.table) == (
        "ch.example",
        9001,
        "analytics",
        "prices",
    )
    assert (sink.user, sink.secure, sink.batch_rows, sink.flush_seconds) == ("", False, 10_000, 1.0)
    assert sink.describe() == "clickhouse://ch.example:9001/analytics.prices"
    assert ClickHouseSink.from_uri("clickhouse://h/d.t").port == 9000
    secure = ClickHouseSink.from_uri("clickhouse://h/d.t?secure=1&verify=0")
    assert (secure.port, secure.secure, secure.verify) == (9440, True, False)


def test_the_password_stays_out_of_describe_and_uri() -> None:
    sink = ClickHouseSink.from_uri("clickhouse://writer:p%40ss-W0rd@h:9000/d.t")
    assert sink.user == "writer" and sink._password == "p@ss-W0rd"
    assert sink.describe() == "clickhouse://writer@h:9000/d.t"
    assert "W0rd" not in sink.uri and "W0rd" not in repr(vars(sink).get("uri"))


def test_settings_give_the_defaults_and_the_uri_overrides_them() -> None:
    crawler, _, _ = price_crawler(
        HYDRA_CLICKHOUSE_BATCH_ROWS=500, HYDRA_CLICKHOUSE_FLUSH_SECONDS=2.5
    )
    sink = build_sink(crawler, "clickhouse://h:9000/d.t")
    assert isinstance(sink, ClickHouseSink)
    assert (sink.batch_rows, sink.flush_seconds) == (500, 2.5)
    sink = build_sink(crawler, "clickhouse://h:9000/d.t?batch_rows=7&flush_seconds=0.5")
    assert isinstance(sink, ClickHouseSink)
    assert (sink.batch_rows, sink.flush_seconds) == (7, 0.5)


@pytest.mark.parametrize(
    "uri",
    [
        "clickhouse://h:9000/prices",  # no database
        "clickhouse://h:9000/",
        "clickhouse:///d.t",  # no host
        "clickhouse://h:9000/d.t?batch_size=10",  # misspelt option
        "clickhouse://h:9000/d.t?batch_rows=0",
        "clickhouse://h:9000/d.t?secure=maybe",
        "clickhouse://h:port/d.t",
    ],
)
def test_bad_uris_are_refused_without_a_connection(uri: str) -> None:
    with pytest.raises(ValueError):
        ClickHouseSink.from_uri(uri)


def test_bad_uri_errors_do_not_show_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        ClickHouseSink.from_uri("clickhouse://u:hunter2@h:9000/nodot")
    assert "hunter2" not in str(caught.value)


def test_odd_names_are_quoted() -> None:
    sink = ClickHouseSink.from_uri("clickhouse://h/my-db.t`x")
    assert sink.qualified == "`my-db`.`t\\`x`"


def test_wants_flush_by_size_and_by_age() -> None:
    by_size = ClickHouseSink.from_uri("clickhouse://h/d.t?batch_rows=3&flush_seconds=60")
    by_age = ClickHouseSink.from_uri("clickhouse://h/d.t?batch_rows=1000&flush_seconds=0.2")

    async def scenario() -> None:  # no open(): the buffer's cadence needs no server
        assert not by_size.wants_flush()
        await by_size.write([Row("1", {}), Row("2", {})])
        assert not by_size.wants_flush()
        await by_size.write([Row("3", {})])
        assert by_size.wants_flush() and by_size.pending_rows == 3
        await by_age.write([Row("1", {})])
        assert not by_age.wants_flush()
        await asyncio.sleep(0.3)
        assert by_age.wants_flush()

    asyncio.run(scenario())


def test_a_failed_flush_keeps_its_rows_in_order_and_their_age() -> None:
    """Nothing listens on port 1: every flush fails, nothing is lost or reordered."""
    sink = ClickHouseSink.from_uri(
        "clickhouse://127.0.0.1:1/d.t?flush_seconds=0.2&batch_rows=100&retry_seconds=0"
    )

    async def scenario() -> None:
        await sink.write([Row("1", {}), Row("2", {})])
        await asyncio.sleep(0.3)
        assert sink.wants_flush()
        flushing = asyncio.create_task(sink.flush())
        await asyncio.sleep(0)
        await sink.write([Row("3", {})])  # while the flush runs
        with pytest.raises(SinkError, match="cannot reach the table, 2 rows kept"):
            await flushing
        assert [row.key for row in sink._pending] == ["1", "2", "3"]
        assert sink.wants_flush()  # the buffer is as old as its oldest row
        await sink.close()  # one last attempt, logged; the rows are the caller's to redo
        assert sink.pending_rows == 0

    asyncio.run(scenario())


def test_ipv6_hosts_are_shown_in_brackets() -> None:
    sink = ClickHouseSink.from_uri("clickhouse://[::1]:9000/d.t")
    assert (sink.host, sink.describe()) == ("::1", "clickhouse://[::1]:9000/d.t")


def test_server_messages_lose_their_stack_trace() -> None:
    exc = ch_errors.ServerException(
        "DB::Exception: Table d.t doesn't exist.. Stack trace:\n\n0. clickhouse-server(...)",
        code=60,
    )
    assert _brief(exc) == "ServerException: Code: 60. DB::Exception: Table d.t doesn't exist"
    assert _classify(exc) == "fatal"
    assert _classify(ch_errors.ServerException("x", code=252)) == "transient"
    assert _classify(ch_errors.ServerException("x", code=53)) == "data"
    assert _classify(ch_errors.NetworkError("refused")) == "transient"
    assert _classify(ConnectionResetError()) == "transient"
    assert _classify(ch_errors.TypeMismatchError("x")) == "data"
    assert _classify(KeyError("x")) == "fatal"


def test_type_arguments_split_at_the_top_level() -> None:
    assert _split_args("UInt8, Array(Tuple(String, Int8)), 'a,b'") == [
        "UInt8",
        "Array(Tuple(String, Int8))",
        "'a,b'",
    ]


GOOD: list[tuple[str, Any, Any]] = [
    ("UInt8", "255", 255),
    ("UInt8", True, 1),
    ("Int64", 3.0, 3),
    ("Int8", decimal.Decimal("-128"), -128),
    ("Float64", "1.5", 1.5),
    ("Float32", 2, 2.0),
    ("String", "é", "é".encode()),
    ("String", {"a": [1]}, b'{"a": [1]}'),
    ("String", 12, b"12"),
    ("String", datetime.date(2026, 1, 2), b"2026-01-02"),
    ("FixedString(2)", "ab", b"ab"),
    ("Date", "2026-12-01", datetime.date(2026, 12, 1)),
    ("Date", "2026-12-01T23:00:00+00:00", datetime.date(2026, 12, 1)),
    ("DateTime", "1970-01-01T00:01:00Z", 60),
    ("DateTime", "1970-01-01T01:01:00+01:00", 60),
    ("DateTime", datetime.datetime(1970, 1, 1, 0, 2), 120),  # naive: UTC
    ("DateTime('Europe/Moscow')", 61.9, 61),
    ("Decimal(9, 2)", "1.005", decimal.Decimal("1.00")),
    ("Decimal32(2)", 1.25, decimal.Decimal("1.25")),
    (
        "UUID",
        "12345678-1234-5678-1234-567812345678",
        uuid.UUID(int=0x12345678123456781234567812345678),
    ),
    ("Enum8('a' = 1, 'b\\'c' = 2)", "b'c", "b'c"),
    ("Enum8('a' = 1, 'b' = 2)", 1, "a"),
    ("Nullable(UInt8)", None, None),
    ("Array(Nullable(UInt8))", ["1", None], [1, None]),
    ("LowCardinality(String)", "x", b"x"),
    ("Tuple(UInt8, String)", (1, "a"), (1, "a")),
]


@pytest.mark.parametrize(("spec", "value", "expected"), GOOD)
def test_values_are_converted_for_their_column(spec: str, value: Any, expected: Any) -> None:
    assert converter(spec)(value) == expected


BAD: list[tuple[str, Any, str]] = [
    ("UInt8", 256, "out of range"),
    ("UInt32", -1, "out of range"),
    ("Int8", 1.5, "not an integer"),
    ("UInt32", "two", "invalid literal"),
    ("Int64", [1], "not an integer"),
    ("Float64", "x", "could not convert"),
    ("Float64", None, "not a number"),
    ("String", float("nan"), "Out of range float"),
    ("String", "\ud800", "surrogate"),
    ("FixedString(2)", "abc", "more than FixedString(2)"),
    ("Date", "1969-12-31", "outside the range of Date"),
    ("Date", "2149-06-07", "outside the range of Date"),
    ("Date", 5, "not a date"),
    ("DateTime", "yesterday", "Invalid isoformat"),
    ("DateTime", "2106-02-08T00:00:00Z", "outside the range of DateTime"),
    ("DateTime", False, "not a date and time"),
    ("Decimal(9, 2)", "12345678", "does not fit"),
    ("Decimal(9, 2)", "inf", "not finite"),
    ("Decimal(9, 2)", True, "not a number"),
    ("UUID", "nope", "badly formed"),
    ("Enum8('a' = 1)", "b", "is not one of ['a']"),
    ("Enum8('a' = 1)", 2, "is not one of"),
    ("Array(UInt8)", "abc", "not a list"),
    ("Array(UInt8)", [None], "not an integer"),
]


@pytest.mark.parametrize(("spec", "value", "message"), BAD)
def test_values_a_column_cannot_take_are_refused(spec: str, value: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        converter(spec)(value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("UInt8", 0),
        ("Nullable(UInt8)", None),
        ("String", b""),
        ("LowCardinality(String)", b""),
        ("Array(String)", []),
        ("Date", datetime.date(1970, 1, 1)),
        ("DateTime('UTC')", 0),
        ("Decimal(9, 2)", decimal.Decimal(0)),
        ("Enum8('b' = 2, 'a' = 1)", "a"),
        ("Tuple(UInt8, String)", (0, b"")),
    ],
)
def test_columns_without_a_value_get_their_types_default(spec: str, expected: Any) -> None:
    assert type_default(spec) == expected
