"""Rows/s through the ClickHouse sink against a direct clickhouse-driver batched insert.

``python -m benchmarks.clickhouse_sink [--rows 200000] [--batch-rows 10000] [--rounds 3]``.

One private ``clickhouse-server`` (Debian's 18.16, on free loopback ports, data in a
temp dir) on the same machine. Each round runs every variant, the order rotated,
each into a fresh table of the sink's schema (``key String, version UInt64,
inserted_at DateTime DEFAULT now(), data String``, ReplacingMergeTree(version) ORDER
BY key) with the same price rows. Every variant serialises a row's data with the
same JSON encoder settings (compact, UTF-8, as the sink stores it):

- ``sink``: :class:`crawlers.sinks.clickhouse.ClickHouseSink`, write + flush at batch
  size: one ``write()`` per row, and when ``wants_flush()`` says so (``batch_rows``)
  an awaited ``flush()`` (its client call in a thread); a last flush.
- ``direct``: the loop a user would write: per ``batch_rows`` slice, each row's
  ``(key, version, json)`` and one ``INSERT ... VALUES`` on the calling thread.
- ``direct columnar``: the same with the columns built as lists and
  ``columnar=True`` (the driver's fastest way in, and the sink's).
- ``sink, worker-like``: the sink as a worker drives it: the event loop turns once
  per row (items arrive from responses) and a flush runs while rows keep coming
  (the ledger's settle), one at a time.
- ``direct, worker-like``: the same feed (one loop turn per row) into a user's
  buffer, inserted columnar when it holds ``batch_rows`` rows, on the loop's thread.

Timed from the first row to the last acknowledged insert (the server's start and
the table's creation left out). Every run is checked: the table holds each key
exactly once, raw and under ``FINAL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bigquery_sink import price_rows
from crawlers.sandbox.clickhouse_server import ClickHouseServer
from crawlers.sinks.base import Rejection, Row
from crawlers.sinks.clickhouse import ENGINE, OWN_SCHEMA, ClickHouseSink

DATABASE = "bench"
VARIANTS = ("sink", "direct", "direct columnar", "sink, worker-like", "direct, worker-like")
#: the sink's JSON settings (its stored bytes), for the direct variants
ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str, separators=(",", ":"))


def run_sink(
    server: ClickHouseServer, table: str, rows: list[Row], batch_rows: int, overlap: bool
) -> float:
    uri = server.uri(f"{DATABASE}.{table}", batch_rows=batch_rows, flush_seconds=60)
    sink = ClickHouseSink.from_uri(uri)

    async def scenario() -> float:
        await sink.open()
        started = time.perf_counter()
        flushing: asyncio.Task[list[Rejection]] | None = None
        for row in rows:
            await sink.write((row,))
            if not overlap:
                if sink.wants_flush():
                    assert await sink.flush() == []
                continue
            if sink.wants_flush() and (flushing is None or flushing.done()):
                # as the ledger does: the flush runs while items keep coming
                assert flushing is None or flushing.result() == []
                flushing = asyncio.create_task(sink.flush())
            await asyncio.sleep(0)  # items arrive from responses: the loop turns
        if flushing is not None:
            assert await flushing == []
        assert await sink.flush() == []
        elapsed = time.perf_counter() - started
        await sink.close()
        return elapsed

    return asyncio.run(scenario())


def run_direct(
    server: ClickHouseServer, table: str, rows: list[Row], batch_rows: int, columnar: bool
) -> float:
    client = server.client()
    client.execute(f"CREATE TABLE {DATABASE}.{table} ({OWN_SCHEMA}) ENGINE = {ENGINE}")
    query = f"INSERT INTO {DATABASE}.{table} (key, version, data) VALUES"
    started = time.perf_counter()
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        version = time.time_ns()
        if columnar:
            data: Any = [
                [row.key for row in chunk],
                [version] * len(chunk),
                [ENCODER.encode(row.data) for row in chunk],
            ]
        else:
            data = [(row.key, version, ENCODER.encode(row.data)) for row in chunk]
        client.execute(query, data, columnar=columnar)
    elapsed = time.perf_counter() - started
    client.disconnect()
    return elapsed


def run_direct_in_loop(
    server: ClickHouseServer, table: str, rows: list[Row], batch_rows: int
) -> float:
    client = server.client()
    client.execute(f"CREATE TABLE {DATABASE}.{table} ({OWN_SCHEMA}) ENGINE = {ENGINE}")
    query = f"INSERT INTO {DATABASE}.{table} (key, version, data) VALUES"

    async def scenario() -> float:
        started = time.perf_counter()
        keys: list[str] = []
        texts: list[str] = []
        for row in rows:
            keys.append(row.key)
            texts.append(ENCODER.encode(row.data))
            if len(keys) >= batch_rows:
                client.execute(query, [keys, [time.time_ns()] * len(keys), texts], columnar=True)
                keys, texts = [], []
            await asyncio.sleep(0)  # items arrive from responses: the loop turns
        if keys:
            client.execute(query, [keys, [time.time_ns()] * len(keys), texts], columnar=True)
        return time.perf_counter() - started

    elapsed = asyncio.run(scenario())
    client.disconnect()
    return elapsed


def check(server: ClickHouseServer, table: str, count: int) -> None:
    client = server.client()
    ((raw, keys),) = client.execute(f"SELECT count(), uniqExact(key) FROM {DATABASE}.{table}")
    ((final,),) = client.execute(f"SELECT count() FROM {DATABASE}.{table} FINAL")
    client.disconnect()
    if (raw, keys, final) != (count, count, count):
        raise SystemExit(f"{table}: {raw} rows, {keys} keys, {final} under FINAL; want {count}")


def measure(
    variant: str, server: ClickHouseServer, table: str, rows: list[Row], batch_rows: int
) -> float:
    if variant.startswith("sink"):
        elapsed = run_sink(server, table, rows, batch_rows, overlap=variant != "sink")
    elif variant == "direct, worker-like":
        elapsed = run_direct_in_loop(server, table, rows, batch_rows)
    else:
        elapsed = run_direct(server, table, rows, batch_rows, columnar=variant.endswith("columnar"))
    check(server, table, len(rows))
    client = server.client()
    client.execute(f"DROP TABLE {DATABASE}.{table}")
    client.disconnect()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ch-"))
    server = ClickHouseServer(workdir / "server").start()
    results: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    rows = price_rows(args.rows, run_id="bench")
    try:
        client = server.client()
        client.execute(f"CREATE DATABASE {DATABASE}")
        client.disconnect()
        # warm-up: first connections, first parts, the server's caches
        measure("direct", server, "warmup", rows[: args.batch_rows], args.batch_rows)
        for round_number in range(args.rounds):
            shift = round_number % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                table = f"round{round_number}_variant{VARIANTS.index(variant)}"
                rate = measure(variant, server, table, rows, args.batch_rows)
                results[variant].append(rate)
                print(f"round {round_number + 1} {variant:>19}: {rate:9.0f} rows/s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[float]], args: Any) -> None:
    print(
        f"\n{args.rows} rows, batch_rows={args.batch_rows}, {args.rounds} rounds (median, min..max)"
    )
    for variant, rates in results.items():
        print(
            f"  {variant:>19}: {statistics.median(rates):9.0f} rows/s "
            f"({min(rates):.0f} .. {max(rates):.0f})"
        )
    pairs = [
        ("sink", "direct"),
        ("sink", "direct columnar"),
        ("sink, worker-like", "direct, worker-like"),
    ]
    for variant, baseline in pairs:
        ratios = [a / b for a, b in zip(results[variant], results[baseline], strict=True)]
        print(
            f"  {variant} / {baseline}: {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f} .. {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
