"""Rows/s through the BigQuery sink against a direct ``insert_rows_json`` loop.

``python -m benchmarks.bigquery_sink [--rows 20000] [--batch-rows 500] [--rounds 3]``.

One ``local-bigquery`` emulator (its own process, the venv ``make
.stamps/bqemulator`` builds) on the same machine. Each round runs both variants,
the order alternating, each into a fresh table with the price items' schema:

- ``sink``: :class:`crawlers.sinks.bigquery.BigQuerySink` as a worker drives it:
  one ``write()`` per row; when ``wants_flush()`` says so (``batch_rows``) a
  ``flush()`` starts while rows keep coming (the ledger's settle), one at a time;
  a last flush. Client calls run in a thread off the event loop.
- ``sink serial``: the same, each flush awaited before the next row is written.
- ``direct``: the plain client loop a user would write: the same rows, ``data``
  serialised to JSON (a JSON column), ``insert_rows_json`` per ``batch_rows``
  slice with ``row_ids``, on the calling thread.

Each run gets a fresh emulator (its inserts slow down as its tables fill, which
would favour whichever variant runs first), and is timed from the first row to
the last acknowledged insert (start-up and the table's creation left out). Every
run is checked: the table holds each ID exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from google.cloud import bigquery

from crawlers.items import PriceItem
from crawlers.sinks.base import Rejection, Row
from crawlers.sinks.bigquery import BigQuerySink
from tests.bqfixtures import BigQueryEmulator, prepare_duckdb_home

PROJECT = "test-proj"
DATASET = "bench"


def price_rows(count: int, run_id: str) -> list[Row]:
    rows = []
    for number in range(count):
        item = PriceItem(
            run_id=run_id,
            batch_id=f"b{number // 20}",
            id=str(number),
            data={"id": str(number), "price": number / 100, "currency": "EUR"},
            fetched_at="2026-12-01T10:00:00.000000+00:00",
            region="default",
            attempt=0,
        )
        rows.append(Row(f"{run_id}/{number}", dataclasses.asdict(item), owner="lease"))
    return rows


def run_sink(
    endpoint: str, table: str, rows: list[Row], batch_rows: int, overlap: bool = True
) -> float:
    uri = f"bigquery://{PROJECT}/{DATASET}.{table}?batch_rows={batch_rows}&flush_seconds=60"
    sink = BigQuerySink.from_uri(uri, endpoint=endpoint)

    async def scenario() -> float:
        await sink.open()
        started = time.perf_counter()
        flushing: asyncio.Task[list[Rejection]] | None = None
        for row in rows:
            await sink.write((row,))
            if not sink.wants_flush():
                continue
            if not overlap:
                assert await sink.flush() == []
            elif flushing is None or flushing.done():
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


def run_direct(client: bigquery.Client, table: str, rows: list[Row], batch_rows: int) -> float:
    schema = BigQuerySink.from_uri(f"bigquery://{PROJECT}/{DATASET}.x").schema
    client.create_table(bigquery.Table(f"{PROJECT}.{DATASET}.{table}", schema=schema))
    started = time.perf_counter()
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        payloads = [{**row.data, "data": json.dumps(row.data["data"])} for row in chunk]
        errors = client.insert_rows_json(
            f"{PROJECT}.{DATASET}.{table}", payloads, row_ids=[row.key for row in chunk]
        )
        assert errors == [], errors[:3]
    return time.perf_counter() - started


def check(client: bigquery.Client, table: str, count: int) -> None:
    sql = f"SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d FROM `{PROJECT}.{DATASET}.{table}`"
    (result,) = list(client.query(sql).result())
    if (result["n"], result["d"]) != (count, count):
        raise SystemExit(f"{table}: {result['n']} rows, {result['d']} distinct, expected {count}")


def measure(variant: str, emulator: BigQueryEmulator, rows: list[Row], batch_rows: int) -> float:
    """One run on a fresh emulator (it slows down as its tables fill); rows/s."""
    emulator.start()
    try:
        client = emulator.client()
        client.create_dataset(f"{PROJECT}.{DATASET}")
        table = variant.replace(" ", "_")
        if variant == "direct":
            elapsed = run_direct(client, table, rows, batch_rows)
        else:
            elapsed = run_sink(emulator.endpoint, table, rows, batch_rows, variant == "sink")
        check(client, table, len(rows))
        client.close()  # type: ignore[no-untyped-call]
    finally:
        emulator.stop()
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-bq-"))
    home = prepare_duckdb_home(workdir / "home")
    results: dict[str, list[float]] = {"sink": [], "sink serial": [], "direct": []}
    rows = price_rows(args.rows, run_id="bench")
    try:
        for round_number in range(args.rounds):
            variants = list(results)
            shift = round_number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                emulator = BigQueryEmulator(workdir / f"{round_number}-{variant}", home)
                rate = measure(variant, emulator, rows, args.batch_rows)
                results[variant].append(rate)
                print(f"round {round_number + 1} {variant:>11}: {rate:7.0f} rows/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[float]], args: Any) -> None:
    print(
        f"\n{args.rows} rows, batch_rows={args.batch_rows}, {args.rounds} rounds (median, min..max)"
    )
    for variant, rates in results.items():
        print(
            f"  {variant:>11}: {statistics.median(rates):7.0f} rows/s "
            f"({min(rates):.0f} .. {max(rates):.0f})"
        )
    for variant in ("sink", "sink serial"):
        ratios = [a / b for a, b in zip(results[variant], results["direct"], strict=True)]
        print(
            f"  {variant} / direct: {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f} .. {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
