"""A worker's metrics, and how its Scrapy stats map onto them.

Counters are fed from *deltas* of the stats collector, read periodically on the
reactor thread (``WorkerMetricSet.sync``): nothing is added to the per-request
or per-item paths. Every metric lives in the registry it is given (one per
crawler), never in prometheus-client's global one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.process_collector import ProcessCollector

#: seconds; from a local file's fsync to a slow warehouse insert
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RESPONSE_STATUS = "downloader/response_status_count/"
DOWNLOAD_EXCEPTION = "downloader/exception_type_count/"
DEADLETTER = "hydra/deadletter/"
HEAL = "hydra/heal/"
#: the lean price path runs without DownloaderStats: its kind's own stats say the same
PRICE_OK = "hydra/prices/ids_fetched"
PRICE_STOPPED = "hydra/prices/stopped/"
PRICE_HTTP_STOP = PRICE_STOPPED + "http_"
PRICE_ERROR_STOP = PRICE_STOPPED + "download_error/"
LEASES_LOST = ("hydra/queue/lease_lost", "hydra/queue/ack_lease_lost")


class WorkerMetricSet:
    """The metrics of one worker, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, kind: str, region: str) -> None:
        self.registry = registry
        self.kind = kind
        self.region = region
        ProcessCollector(registry=registry)
        self.info = Info(
            "hydra_worker", "This worker: ID, spider, task kind, region.", registry=registry
        )
        self.requests = Counter(
            "hydra_requests_total",
            "Responses received, by HTTP status; `error`: downloads that raised.",
            ["kind", "region", "status"],
            registry=registry,
        )
        self.items = Counter(
            "hydra_items_total",
            "Items that left the item pipelines (Scrapy's item_scraped_count).",
            ["kind", "region"],
            registry=registry,
        )
        self.items_stored = Counter(
            "hydra_items_stored_total",
            "Items a successful sink flush made durable (hydra/sink/items_stored).",
            ["kind", "region"],
            registry=registry,
        )
        self.deadletters = Counter(
            "hydra_deadletter_total",
            "Dead-letter entries written, by reason.",
            ["reason"],
            registry=registry,
        )
        self.heals = Counter(
            "hydra_heals_total",
            "Heals of web/API channels by outcome (queued, healed, already_working, "
            "new_channel, needs_review).",
            ["outcome"],
            registry=registry,
        )
        self.leases_lost = Counter(
            "hydra_leases_lost_total",
            "Leases found gone on renewal, checkpoint or ack: another worker has the message.",
            registry=registry,
        )
        self.claimed = Counter(
            "hydra_messages_claimed_total", "Messages leased from the queue.", registry=registry
        )
        self.acked = Counter(
            "hydra_messages_acked_total",
            "Messages acknowledged after their items were stored.",
            registry=registry,
        )
        self.queue_errors = Counter(
            "hydra_queue_errors_total",
            "Claims, acks and checkpoints that failed (queue server unreachable).",
            registry=registry,
        )
        self.flushes = Counter(
            "hydra_sink_flushes_total", "Successful flush rounds of the sinks.", registry=registry
        )
        self.flush_errors = Counter(
            "hydra_sink_flush_errors_total",
            "Failed flush rounds of the sinks (retried with back-off).",
            registry=registry,
        )
        self.rows_rejected = Counter(
            "hydra_sink_rows_rejected_total",
            "Rows a sink refused for good (dead-lettered as sink_rejected).",
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "hydra_sink_flush_seconds",
            "Duration of the flush rounds of the sinks, failed ones included.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.sink_failing = Gauge(
            "hydra_sink_failing",
            "1 while the sinks' flushes fail (intake paused), else 0.",
            registry=registry,
        )
        self.leases_held = Gauge(
            "hydra_leases_held", "Messages this worker holds leases on.", registry=registry
        )
        self.queue_depth = Gauge(
            "hydra_queue_depth",
            "Messages waiting in the queue (ready or delayed), sampled.",
            ["queue"],
            registry=registry,
        )
        self.failed = Gauge(
            "hydra_worker_failed",
            "1 once this worker's run has failed (hydra/worker/failed is set).",
            registry=registry,
        )
        self._seen: dict[str, float] = {}
        self._requests: dict[str, Counter] = {}
        # series that exist (at 0) from the start, so rate() and absent() see them
        self.items.labels(kind, region)
        self.items_stored.labels(kind, region)
        self.heals.labels("needs_review")

    def sync(self, stats: Mapping[str, Any]) -> None:
        """Add what the stats counted since the last call."""
        lost = 0.0
        downloader_stats = "downloader/response_count" in stats
        for key, value in list(stats.items()):
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            delta = value - self._seen.get(key, 0)
            if delta <= 0:
                continue
            self._seen[key] = value
            if key.startswith(RESPONSE_STATUS):
                self._add_requests(key[len(RESPONSE_STATUS) :], delta)
            elif key.startswith(DOWNLOAD_EXCEPTION):
                self._add_requests("error", delta)
            elif not downloader_stats and key == PRICE_OK:
                self._add_requests("ok", delta)
            elif not downloader_stats and key.startswith(PRICE_HTTP_STOP):
                self._add_requests(key[len(PRICE_HTTP_STOP) :], delta)
            elif not downloader_stats and key.startswith(PRICE_ERROR_STOP):
                self._add_requests("error", delta)
            elif key.startswith(DEADLETTER):
                self.deadletters.labels(key[len(DEADLETTER) :]).inc(delta)
            elif key.startswith(HEAL):
                self.heals.labels(key[len(HEAL) :]).inc(delta)
            elif key in LEASES_LOST:
                lost += delta
            else:
                counter = self._simple(key)
                if counter is not None:
                    counter.inc(delta)
        if lost:
            self.leases_lost.inc(lost)
        self.failed.set(1 if stats.get("hydra/worker/failed") else 0)

    def _add_requests(self, status: str, delta: float) -> None:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = self.requests.labels(self.kind, self.region, status)
        child.inc(delta)

    def _simple(self, key: str) -> Any:
        if key == "item_scraped_count":
            return self.items.labels(self.kind, self.region)
        if key == "hydra/sink/items_stored":
            return self.items_stored.labels(self.kind, self.region)
        return {
            "hydra/queue/claimed": self.claimed,
            "hydra/queue/acked": self.acked,
            "hydra/queue/errors": self.queue_errors,
            "hydra/sink/flushes": self.flushes,
            "hydra/sink/flush_errors": self.flush_errors,
            "hydra/sink/rows_rejected": self.rows_rejected,
        }.get(key)
