"""Leases messages from the task queue and acknowledges them once their work is durable.

This is where Hydra is stricter than scrapy-redis. A claimed message becomes a
:class:`TaskRun`. The run is acknowledged only when (1) its spider declared it
finished, (2) every item it produced has left the item pipelines, and (3) the
registered flush hooks (the sinks) have made those items durable. Its
follow-ups (a requeued remainder, dead-letter entries) travel with the ack.
Meanwhile a background loop renews the leases of every run held, so a slow but
alive worker keeps its work; a killed worker stops renewing, and its messages
are reclaimed by another worker after ``HYDRA_QUEUE_LEASE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from pydantic import ValidationError
from scrapy import Spider, signals

from crawlers.config import HydraConfig
from crawlers.models import DeadLetterEntry, validation_error_text
from crawlers.models.deadletter import DeadLetterReason
from crawlers.queues import Acknowledgement, Delivery, TaskQueue, build_queue, new_worker_id

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

FlushHook = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class TaskRun:
    """One leased message and the bookkeeping that decides when it may be acked."""

    delivery: Delivery
    message: Any
    items_pending: int = 0
    finished: bool = False
    requeue: list[str] = field(default_factory=list)
    deadletter: list[str] = field(default_factory=list)
    lease_lost: bool = False
    #: how far the spider got (e.g. the index of the ID being fetched)
    cursor: int = 0
    #: payloads that replace the message if the worker shuts down before finishing it
    resume_payloads: Callable[[], list[str]] | None = None

    @property
    def lease_id(self) -> str:
        return self.delivery.lease_id

    @property
    def ackable(self) -> bool:
        return self.finished and self.items_pending == 0


class TaskLedger:
    """Extension shared by task spiders, their middlewares and pipelines.

    A spider opts in by having a ``hydra_queue_key`` attribute; for other
    spiders the ledger stays idle.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        self.stats = crawler.stats
        self.worker_id = new_worker_id()
        self.queue: TaskQueue | None = None
        #: where dead-letter entries go, for summaries (kept after the queue closes)
        self.deadletter_location = ""
        self.runs: dict[str, TaskRun] = {}
        self._ready: list[TaskRun] = []
        self._flush_hooks: list[FlushHook] = []
        self._settle_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        #: whether the last flush of the sinks succeeded
        self._flushed = True
        self._loops: list[asyncio.Task[None]] = []
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)
        crawler.signals.connect(self.item_error, signal=signals.item_error)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TaskLedger:
        return cls(crawler)

    @classmethod
    def of(cls, crawler: Crawler) -> TaskLedger:
        """The crawler's ledger, for components that work with task runs."""
        ledger = crawler.get_extension(cls)
        if ledger is None:
            raise RuntimeError(f"{cls.__name__} is not enabled: add it to EXTENSIONS")
        return ledger

    # -- lifecycle ---------------------------------------------------------

    async def spider_opened(self, spider: Spider) -> None:
        key = getattr(spider, "hydra_queue_key", None)
        if key is None:
            return
        self.queue = build_queue(
            self.config,
            key,
            worker_id=self.worker_id,
            redis_params=self.crawler.settings.getdict("REDIS_PARAMS"),
        )
        self.deadletter_location = self.queue.describe_deadletter()
        await self.queue.open()
        where = self.config.redis_url_redacted or "embedded memory queue"
        logger.info("Hydra worker %s consuming %s from %s", self.worker_id, key, where)
        self._loops = [
            asyncio.ensure_future(self._every(self.config.queue_lease_seconds / 3, self.renew)),
            asyncio.ensure_future(self._every(self.config.ack_interval_seconds, self.settle)),
        ]

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        try:
            if self.queue is None:
                return
            for loop in self._loops:
                loop.cancel()
            await self.settle()
            await self._give_back_unfinished()
            await self.queue.close()
            self.queue = None
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Scrapy runs ``spider_closed`` handlers concurrently; reporters wait for this."""
        await self._closed.wait()

    def add_flush_hook(self, hook: FlushHook) -> None:
        """Register a coroutine that makes buffered side effects durable before acks."""
        self._flush_hooks.append(hook)

    def remove_flush_hook(self, hook: FlushHook) -> None:
        with contextlib.suppress(ValueError):
            self._flush_hooks.remove(hook)

    # -- intake ------------------------------------------------------------

    async def push(self, payloads: list[str]) -> None:
        await self._queue().push(payloads)

    async def consume(self, parse: Callable[[str], Any]) -> AsyncIterator[TaskRun]:
        """Yield runs of valid messages while the worker has room for them.

        Invalid and poison messages are dead-lettered and acked here; the
        caller only sees work it can do. Returns when the queue has been idle
        for ``HYDRA_IDLE_CLOSE_SECONDS`` (an embedded queue: once drained).
        """
        queue = self._queue()
        backoff = idle_since = None
        while True:
            room = self._room()
            if room <= 0:
                await self._wait_for_change(1.0)
                continue
            try:
                result = await queue.claim(room)
            except Exception as exc:  # the queue server is away: wait, don't exit
                self.stats.inc_value("hydra/queue/errors")
                logger.warning("Claiming from %s failed (%s); retrying", queue.key, exc)
                backoff = self.config.queue_poll_max_seconds
                await self._wait_for_change(backoff)
                continue
            self.stats.inc_value("hydra/queue/reclaimed", result.reclaimed)
            if not result.deliveries:
                now = time.monotonic()
                idle_since = None if self.runs else (idle_since or now)  # holding work: busy
                if idle_since is not None and self._idle_expired(queue, now - idle_since):
                    return
                backoff = min((backoff or 0.025) * 2, self.config.queue_poll_max_seconds)
                await self._wait_for_change(backoff)
                continue
            backoff = idle_since = None
            for delivery in result.deliveries:
                run = self._admit(delivery, parse)
                if run is not None:
                    yield run

    def _admit(self, delivery: Delivery, parse: Callable[[str], Any]) -> TaskRun | None:
        self.stats.inc_value("hydra/queue/claimed")
        if delivery.redeliveries:
            self.stats.inc_value("hydra/queue/redelivered")
        run = TaskRun(delivery, message=None)
        self.runs[run.lease_id] = run
        if delivery.redeliveries >= self.config.queue_max_deliveries:
            error = f"reclaimed from dead workers {delivery.redeliveries} times"
            self._dead_letter_message(run, "poison", error)
            return None
        try:
            run.message = parse(delivery.payload)
        except ValidationError as exc:
            self._dead_letter_message(run, "invalid_message", validation_error_text(exc))
            return None
        except ValueError as exc:
            self._dead_letter_message(run, "invalid_message", str(exc))
            return None
        return run

    def _dead_letter_message(self, run: TaskRun, reason: DeadLetterReason, error: str) -> None:
        logger.warning("Dead-lettering message from %s: %s", run.delivery.source, error)
        entry = self.dead_letter_entry(reason, error, run.delivery.payload)
        self.finish(run, deadletter=[entry])

    def dead_letter_entry(
        self, reason: DeadLetterReason, error: str, payload: str, **details: Any
    ) -> str:
        self.stats.inc_value(f"hydra/deadletter/{reason}")
        source = self.queue.key if self.queue is not None else ""
        entry = DeadLetterEntry.build(
            reason=reason,
            error=error,
            source=source,
            payload=payload,
            worker=self.worker_id,
            details=details,
        )
        return entry.model_dump_json()

    # -- progress ----------------------------------------------------------

    def item_emitted(self, run: TaskRun) -> None:
        run.items_pending += 1

    def finish(
        self, run: TaskRun, *, requeue: list[str] | None = None, deadletter: list[str] | None = None
    ) -> None:
        """The spider is done with ``run``; it is acked once its items are durable."""
        if run.finished:
            raise RuntimeError(f"task run {run.lease_id} finished twice")
        run.finished = True
        run.requeue.extend(requeue or ())
        run.deadletter.extend(deadletter or ())
        self._maybe_ready(run)

    def item_scraped(self, item: Any, response: Response | None, spider: Spider) -> None:
        self._item_done(response)

    def item_dropped(
        self, item: Any, response: Response | None, exception: Exception, spider: Spider
    ) -> None:
        self._item_done(response)

    def item_error(
        self, item: Any, response: Response | None, spider: Spider, failure: Failure
    ) -> None:
        run = self._run_of(response)
        if run is not None:
            payload = ItemAdapter(item).asdict()
            entry = self.dead_letter_entry(
                "item_error",
                failure.getErrorMessage(),
                json.dumps(payload, default=str, ensure_ascii=False),
            )
            run.deadletter.append(entry)
        self._item_done(response)

    def _item_done(self, response: Response | None) -> None:
        run = self._run_of(response)
        if run is not None:
            run.items_pending -= 1
            self._maybe_ready(run)

    def _run_of(self, response: Response | None) -> TaskRun | None:
        if response is None or response.request is None:
            return None
        run = response.request.meta.get("hydra_run")
        return run if isinstance(run, TaskRun) else None

    def _maybe_ready(self, run: TaskRun) -> None:
        if run.ackable:
            self._ready.append(run)
            self._changed.set()

    # -- durability --------------------------------------------------------

    async def settle(self, *, flush: bool = False) -> None:
        """Flush every sink, then ack the runs that were ready before the flush.

        Without ready runs nothing is flushed, unless ``flush`` (a closing sink).
        """
        async with self._settle_lock:
            if self.queue is None or not (self._ready or flush):
                return
            ready, self._ready = self._ready, []
            try:
                for hook in self._flush_hooks:
                    await hook()
                self._flushed = True
            except Exception:
                logger.exception("Flushing sinks failed; %d messages stay leased", len(ready))
                self.stats.inc_value("hydra/sink/flush_errors")
                self._flushed = False
                self._ready = ready + self._ready
                return
            acks = [Acknowledgement(r.lease_id, r.requeue, r.deadletter) for r in ready]
            try:
                results = await self.queue.ack(acks)
            except Exception as exc:  # retried next round; the leases are still renewed
                logger.warning("Acknowledging %d messages failed (%s)", len(acks), exc)
                self.stats.inc_value("hydra/queue/errors")
                self._ready = ready + self._ready
                return
            for run, held in zip(ready, results, strict=True):
                del self.runs[run.lease_id]
                if held:
                    self.stats.inc_value("hydra/queue/acked")
                else:
                    # another worker re-runs this message: what we stored is duplicated
                    self.stats.inc_value("hydra/queue/ack_lease_lost")
                    logger.warning("Lease %s expired before its ack", run.lease_id)
            self._changed.set()

    async def renew(self) -> None:
        if self.queue is None or not self.runs:
            return
        lost = await self.queue.renew(list(self.runs))
        self.stats.inc_value("hydra/queue/lease_renewals")
        for lease_id in lost:
            run = self.runs.get(lease_id)
            if run is not None and not run.lease_lost:
                run.lease_lost = True
                self.stats.inc_value("hydra/queue/lease_lost")
                logger.warning("Lost the lease of %s (renewed too late?)", lease_id)

    async def _give_back_unfinished(self) -> None:
        """On shutdown: unfinished runs whose items are durable are acked with their
        remainder; the rest (e.g. after a failed flush) go back whole."""
        assert self.queue is not None
        acks, rest = [], []
        for run in self.runs.values():
            durable = self._flushed and run.items_pending == 0 and not run.finished
            if durable and run.resume_payloads is not None:
                acks.append(Acknowledgement(run.lease_id, run.resume_payloads()))
            else:
                rest.append(run.lease_id)
        if acks:
            await self.queue.ack(acks)
            self.stats.inc_value("hydra/queue/resumed", len(acks))
        if rest:
            self.stats.inc_value("hydra/queue/released", await self.queue.release(rest))
        self.runs.clear()

    # -- helpers -----------------------------------------------------------

    def _queue(self) -> TaskQueue:
        if self.queue is None:
            raise RuntimeError("TaskLedger has no queue: is hydra_queue_key set on the spider?")
        return self.queue

    def _room(self) -> int:
        """Free batch slots; finished runs awaiting their ack do not take one."""
        working = sum(1 for run in self.runs.values() if not run.finished)
        held_limit = 4 * self.config.queue_prefetch
        return min(self.config.queue_prefetch - working, held_limit - len(self.runs))

    def _idle_expired(self, queue: TaskQueue, idle_for: float) -> bool:
        if not queue.shared:
            return True
        limit = self.config.idle_close_seconds
        return limit > 0 and idle_for >= limit

    async def _wait_for_change(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                logger.exception("Hydra ledger background job %s failed", job.__name__)
