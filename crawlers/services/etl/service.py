"""``scrapy etl``'s loop: raw streams in, DataProcessor, sinks out, acknowledge last.

Each round reads up to ``HYDRA_ETL_BATCH`` entries per stream through the
consumer group ``HYDRA_ETL_GROUP`` (entries another processor left pending for
``HYDRA_QUEUE_LEASE_SECONDS`` first: it died with them), processes them, writes
the rows to every sink of ``HYDRA_ETL_SINKS``, flushes, and only then
acknowledges (``XACK``). So a processor killed mid-batch loses nothing: its
entries are claimed by another and processed again; the sinks' keys make the
replay count once (ClickHouse ``FINAL``, dedup).

One bad record never blocks a stream: a record that cannot be processed (not a
raw record, an unknown task type, a value that does not clean) is dead-lettered
with the reason and its raw payload at once; an entry delivered
``HYDRA_ETL_MAX_ATTEMPTS`` times (its processor kept dying, or processing the
batch kept failing) is dead-lettered as poison. A sink that fails keeps its rows;
the loop stops reading and retries the flush with back-off, acknowledging nothing
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions

from crawlers.config import HydraConfig
from crawlers.etl.processor import DataProcessor, ProcessedRow
from crawlers.models.deadletter import DeadLetterEntry, DeadLetterReason
from crawlers.monitoring.etl import EtlMetricSet, Outcome
from crawlers.queues import new_worker_id
from crawlers.sinks import Rejection, Row, Sink, SinkError

logger = logging.getLogger(__name__)
#: how long a read waits for new entries before the idle check
BLOCK_MS = 500
#: the longest pause between two attempts at a failing flush
MAX_BACKOFF = 30.0
#: the order of a round's acknowledged entries before its rows
OUTCOMES_IN_ORDER: tuple[Outcome, ...] = ("poison", "invalid", "duplicate")


@dataclass
class _Entry:
    stream: str
    id: str
    raw: str

    @property
    def handle(self) -> str:
        return f"{self.stream}|{self.id}"


class EtlService:
    def __init__(
        self,
        config: HydraConfig,
        processor: DataProcessor,
        sinks: Sequence[Sink],
        *,
        client: redis.asyncio.Redis | None = None,
        metrics: EtlMetricSet | None = None,
    ) -> None:
        self.config = config
        #: Prometheus metrics (``scrapy etl`` with HYDRA_METRICS_PORT), added to per batch
        self.metrics = metrics
        self.processor = processor
        self.sinks = list(sinks)
        self.consumer = new_worker_id()
        self.stats: Counter[str] = Counter()
        self._client = client
        self._stopping = asyncio.Event()
        #: the round's processed rows by entry handle (a rejected one frees its key)
        self._processed: dict[str, ProcessedRow] = {}
        #: the round's entries a sink rejected (for the metrics; once, however many sinks)
        self._rejected: set[str] = set()

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("the ETL service is not open")
        return self._client

    def stop(self) -> None:
        """Finish the round in hand (its flush and acks), then return from :meth:`run`."""
        self._stopping.set()

    async def open(self) -> None:
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(
                self.config.redis_url, decode_responses=True
            )
        for stream in self.config.etl_streams:
            try:
                await self.client.xgroup_create(
                    stream, self.config.etl_group, id="0", mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self.processor.open()
        for sink in self.sinks:
            await sink.open()

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
        await self.processor.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run(self) -> Counter[str]:
        """Process until stopped, or idle for ``HYDRA_IDLE_CLOSE_SECONDS`` (0: forever)."""
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            entries = await self._read()
            if not entries:
                idle = self.config.idle_close_seconds
                if idle and time.monotonic() - idle_since >= idle:
                    logger.info("Idle for %.0f s: closing", idle)
                    break
                continue
            idle_since = time.monotonic()
            started = time.perf_counter()
            await self._round(entries)
            if self.metrics is not None:
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return self.stats

    async def _read(self) -> list[_Entry]:
        entries: list[_Entry] = []
        group, batch = self.config.etl_group, self.config.etl_batch
        lease_ms = int(self.config.queue_lease_seconds * 1000)
        for stream in self.config.etl_streams:
            claimed: Any = await self.client.xautoclaim(
                stream, group, self.consumer, lease_ms, start_id="0-0", count=batch
            )
            taken = [item for item in claimed[1] if item and item[1] is not None]
            if taken:
                self.stats["claimed"] += len(taken)
                if self.metrics is not None:
                    self.metrics.reclaimed.labels(stream).inc(len(taken))
            entries += [_Entry(stream, str(i), str(f.get("message", ""))) for i, f in taken]
        room = max(1, self.config.etl_batch - len(entries))
        block = None if entries else BLOCK_MS
        answer: Any = await self.client.xreadgroup(
            group, self.consumer, dict.fromkeys(self.config.etl_streams, ">"),
            count=room, block=block,
        )  # fmt: skip
        for stream, items in answer or []:
            entries += [_Entry(str(stream), str(i), str(f.get("message", ""))) for i, f in items]
        self.stats["read"] += len(entries)
        return entries

    async def _round(self, entries: list[_Entry]) -> None:
        done: list[_Entry] = []
        fresh: list[_Entry] = []
        for entry in entries:
            if await self._deliveries(entry) > self.config.etl_max_attempts:
                error = f"delivered more than {self.config.etl_max_attempts} times"
                await self._dead_letter(entry, "poison", error)
                done.append(entry)
            else:
                fresh.append(entry)
        by_handle = {entry.handle: entry for entry in fresh}
        try:
            outcome = await self.processor.process([(e.handle, e.raw) for e in fresh])
        except Exception as exc:  # the whole batch: left pending, retried, then poison
            logger.warning("Processing a batch failed (%s); it will be retried", exc)
            await self._ack(done)
            if self.metrics is not None:
                self.metrics.batch_errors.inc()
                self.metrics.add("poison", Counter(entry.stream for entry in done))
            await asyncio.sleep(1.0)
            return
        for handle, raw, reason, error in outcome.failures:
            await self._dead_letter(by_handle[handle], "invalid_message", f"{reason}: {error}", raw)
            done.append(by_handle[handle])
        self.stats["duplicates"] += len(outcome.duplicates)
        done += [by_handle[handle] for handle in outcome.duplicates]
        rows = [Row(key=r.key, data=r.data, owner=r.entry_id) for r in outcome.rows]
        self._processed = {row.entry_id: row for row in outcome.rows}
        self._rejected.clear()
        if rows and not await self._store(rows):
            return  # stopping while a sink failed: nothing acknowledged, all re-read later
        self.stats["processed"] += len(rows)
        poison = len(done) - len(outcome.failures) - len(outcome.duplicates)
        done += [by_handle[row.owner] for row in rows if row.owner in by_handle]
        await self._ack(done)
        if self.metrics is not None:
            self._count(done, poison, len(outcome.failures), len(outcome.duplicates))
            self.metrics.count_invalid(failure.reason for failure in outcome.failures)

    def _count(self, done: list[_Entry], poison: int, invalid: int, duplicates: int) -> None:
        """Count a round's acknowledged entries by stream: ``done`` holds the poison ones,
        then the invalid ones, the duplicates and the rows (sink-rejected ones among them)."""
        assert self.metrics is not None
        ends = (poison, poison + invalid, poison + invalid + duplicates)
        starts = (0, *ends)
        for outcome, start, end in zip(OUTCOMES_IN_ORDER, starts, ends, strict=False):
            self.metrics.add(outcome, Counter(entry.stream for entry in done[start:end]))
        rows = done[ends[-1] :]
        rejected = self._rejected
        self.metrics.add("stored", Counter(e.stream for e in rows if e.handle not in rejected))
        self.metrics.add("sink_rejected", Counter(e.stream for e in rows if e.handle in rejected))

    async def _store(self, rows: list[Row]) -> bool:
        """Write and flush ``rows`` to every sink, retrying until durable (True) or
        stopped (False)."""
        for sink in self.sinks:
            await sink.write(rows)
        delay = 0.5
        while True:
            try:
                for sink in self.sinks:
                    for rejection in await sink.flush():
                        await self._reject(rejection, sink)
                if self.metrics is not None:
                    self.metrics.sink_failing.set(0)
                return True
            except SinkError as exc:
                self.stats["sink_errors"] += 1
                if self.metrics is not None:
                    self.metrics.flush_errors.inc()
                    self.metrics.sink_failing.set(1)
                logger.warning("A sink failed (%s); retrying in %.1f s", exc, delay)
            if self._stopping.is_set():
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _deliveries(self, entry: _Entry) -> int:
        pending: Any = await self.client.xpending_range(
            entry.stream, self.config.etl_group, min=entry.id, max=entry.id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _ack(self, entries: list[_Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            await self.client.xack(stream, self.config.etl_group, *ids)
        self.stats["acked"] += len(entries)

    async def _reject(self, rejection: Rejection, sink: Sink) -> None:
        """Dead-letter a row a sink will never store, and free its content key (so the
        same content, fixed and sent again, is not dropped as a duplicate)."""
        processed = self._processed.get(rejection.row.owner)
        if processed is not None:
            await self.processor.release([processed])
        stream = rejection.row.owner.split("|", 1)[0]
        self._rejected.add(rejection.row.owner)
        entry = _Entry(stream, rejection.row.owner.split("|", 1)[-1], "")
        await self._dead_letter(
            entry, "sink_rejected", f"{sink.describe()}: {rejection.error}", str(rejection.row.data)
        )

    async def _dead_letter(
        self, entry: _Entry, reason: DeadLetterReason, error: str, raw: str | None = None
    ) -> None:
        letter = DeadLetterEntry.build(
            reason=reason,
            error=error,
            source=entry.stream,
            payload=entry.raw if raw is None else raw,
            max_bytes=self.config.max_message_bytes,
            redactor=self.config.redactor,
            kind="raw_record",
            message_id=entry.id,
            worker=self.consumer,
        )
        await self.client.rpush(self.config.deadletter_key, letter.model_dump_json())
        self.stats[f"deadletter/{reason}"] += 1
