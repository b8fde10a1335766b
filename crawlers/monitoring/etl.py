"""The metrics of an ETL processor (``scrapy etl``).

The service adds to them once per batch (its outcomes counted by stream first),
never per record; the consumer group's lag and pending entries are sampled in the
background with one ``XINFO GROUPS`` per stream. Every metric lives in the
registry it is given, never in prometheus-client's global one.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.process_collector import ProcessCollector

#: how an entry left the processor, once acknowledged
Outcome = Literal["stored", "duplicate", "invalid", "sink_rejected", "poison"]
OUTCOMES: tuple[Outcome, ...] = ("stored", "duplicate", "invalid", "sink_rejected", "poison")
#: seconds; a batch is read, processed, written, flushed and acknowledged
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EtlMetricSet:
    """The metrics of one ETL processor, registered in ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, *, streams: Sequence[str], group: str, consumer: str
    ) -> None:
        self.registry = registry
        self.streams = list(streams)
        self.group = group
        ProcessCollector(registry=registry)
        Info("hydra_etl", "This ETL processor: consumer name, group.", registry=registry).info(
            {"consumer": consumer, "group": group}
        )
        self.records = Counter(
            "hydra_etl_records_total",
            "Stream entries acknowledged, by stream and outcome.",
            ["stream", "outcome"],
            registry=registry,
        )
        self.invalid = Counter(
            "hydra_etl_invalid_records_total",
            "Records the DataProcessor could not process (dead-lettered), by reason.",
            ["reason"],
            registry=registry,
        )
        self.reclaimed = Counter(
            "hydra_etl_entries_reclaimed_total",
            "Entries taken over from a processor that left them pending (it died).",
            ["stream"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "hydra_etl_batch_seconds",
            "Duration of a batch: processing, sink writes and flushes, acknowledgement.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_errors = Counter(
            "hydra_etl_batch_errors_total",
            "Batches whose processing raised (Redis, the model): left pending, retried.",
            registry=registry,
        )
        self.flush_errors = Counter(
            "hydra_etl_sink_flush_errors_total",
            "Failed sink flushes (retried with back-off, nothing acknowledged meanwhile).",
            registry=registry,
        )
        self.sink_failing = Gauge(
            "hydra_etl_sink_failing",
            "1 while a sink's flushes fail (reading paused), else 0.",
            registry=registry,
        )
        self.lag = Gauge(
            "hydra_etl_lag_entries",
            "Entries of the stream not yet delivered to the consumer group, sampled.",
            ["stream"],
            registry=registry,
        )
        self.pending = Gauge(
            "hydra_etl_pending_entries",
            "Entries delivered to the group's consumers and not yet acknowledged, sampled.",
            ["stream"],
            registry=registry,
        )
        # series that exist (at 0) from the start, so rate() and absent() see them
        self._children = {
            (stream, outcome): self.records.labels(stream, outcome)
            for stream in self.streams
            for outcome in OUTCOMES
        }
        self.sink_failing.set(0)

    def add(self, outcome: Outcome, by_stream: Mapping[str, int]) -> None:
        """Add a batch's entries of one outcome: one increment per stream."""
        for stream, number in by_stream.items():
            if number <= 0:
                continue
            child = self._children.get((stream, outcome))
            if child is None:
                child = self._children[stream, outcome] = self.records.labels(stream, outcome)
            child.inc(number)

    def count_invalid(self, reasons: Iterable[str]) -> None:
        for reason, number in collections.Counter(reasons).items():
            self.invalid.labels(reason).inc(number)

    async def sample_groups(self, client: Any) -> None:
        """The group's lag and pending entries of every stream (``XINFO GROUPS``; a
        lag Redis cannot tell, after deletions, keeps the last value)."""
        for stream in self.streams:
            groups: Any = await client.xinfo_groups(stream)
            for group in groups:
                if str(group.get("name")) != self.group:
                    continue
                self.pending.labels(stream).set(int(group.get("pending") or 0))
                lag = group.get("lag")
                if lag is not None:
                    self.lag.labels(stream).set(int(lag))
