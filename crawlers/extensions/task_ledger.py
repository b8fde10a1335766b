"""Leases messages from the task queue and acknowledges them once their work is durable.

This is where Hydra is stricter than scrapy-redis. A claimed message becomes a
:class:`~crawlers.tasks.base.TaskRun`. Every request and item the run produces
is attributed to it (requests carry the lease id in ``meta["hydra_lease"]``).
The run ends by itself when its spider is done with it and no request of it is
outstanding, or early when its kind decides on a failure, or at its deadline.
It is acknowledged only when every item it produced has left the item
pipelines and the sinks have made them durable; its follow-ups (a requeued
remainder, dead-letter entries) travel with the ack.

Three background loops run from the moment the spider opens, whatever state
the queue server is in: *settle* (flush the sinks, then ack what is ready and
checkpoint what is not), *renew* (keep the leases; a lost lease stops its run),
and *watchdog* (deadlines). The intake (``consume``) pauses while a sink fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from scrapy import Request, Spider, signals
from scrapy.utils.misc import build_from_crawler, load_object

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.extensions.settlement import Settlement
from crawlers.models import DeadLetterEntry, validation_error_text
from crawlers.queues import Delivery, TaskQueue, build_queue, new_worker_id
from crawlers.tasks.base import InvalidMessage, Outcome, RunFailure, TaskKind, TaskRun

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure

    from crawlers.models.deadletter import DeadLetterReason
    from crawlers.sinks import Rejection

logger = logging.getLogger(__name__)


class Flushable(Protocol):
    """What the ledger flushes before acks (the sink pipeline)."""

    def dirty(self) -> bool: ...

    async def flush(self) -> list[Rejection]: ...


class TaskLedger(Settlement):
    """Extension shared by task spiders, their middlewares and pipelines.

    A spider opts in with a ``task_kind`` attribute; for other spiders it stays idle.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        assert crawler.stats is not None
        self.stats = crawler.stats
        self.worker_id = new_worker_id()
        self.queue: TaskQueue | None = None
        self.kind: TaskKind | None = None
        self._kinds: dict[str, TaskKind] = {}
        #: where dead-letter entries go, for summaries (kept after the queue closes)
        self.deadletter_location = ""
        self.runs: dict[str, TaskRun] = {}
        #: id(item) -> run, for items whose response does not say (start() items)
        self._item_owner: dict[int, TaskRun] = {}
        self._flushables: list[Flushable] = []
        self._changed = asyncio.Event()
        self._settle_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._queue_down_since: float | None = None
        self._queue_last_warned = 0.0
        self._queue_ever_up = False
        Settlement.__init__(self)
        connect = crawler.signals.connect
        connect(self.spider_opened, signal=signals.spider_opened)
        connect(self.spider_closed, signal=signals.spider_closed)
        connect(self.item_scraped, signal=signals.item_scraped)
        connect(self.item_dropped, signal=signals.item_dropped)
        connect(self.item_error, signal=signals.item_error)
        connect(self.request_dropped, signal=signals.request_dropped)
        connect(self.spider_error, signal=signals.spider_error)

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

    def kind_named(self, name: str) -> TaskKind:
        """The task kind registered as ``name`` (built once per crawler)."""
        if name not in self._kinds:
            kinds = self.config.registry("task_kinds")
            if name not in kinds:
                known = ", ".join(sorted(kinds))
                raise HydraConfigError([f"HYDRA_TASK_KINDS: no task kind {name!r} ({known})"])
            self._kinds[name] = build_from_crawler(load_object(kinds[name]), self.crawler)
        return self._kinds[name]

    # -- lifecycle ---------------------------------------------------------

    async def spider_opened(self, spider: Spider) -> None:
        name = getattr(spider, "task_kind", None)
        if not name:
            return
        self.kind = self.kind_named(name)
        queue = build_queue(self.crawler, self.kind.queue_key(), worker_id=self.worker_id)
        await queue.open()  # no network I/O: a server that is away shows in the loops
        self.queue = queue
        self.deadletter_location = self.queue.describe_deadletter()
        logger.info(
            "Hydra worker %s consuming %s; dead letters go to %s",
            self.worker_id,
            self.queue.describe(),
            self.deadletter_location,
        )
        renew_every = self.config.queue_lease_seconds / 3
        self._loops = [
            asyncio.ensure_future(self._every(renew_every, self.renew)),
            asyncio.ensure_future(self._settle_loop()),
            asyncio.ensure_future(self._every(min(1.0, renew_every), self.watchdog)),
        ]

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        try:
            if self.queue is None:
                return
            self._stopping.set()
            self._settle_now.set()
            await asyncio.gather(*self._loops, return_exceptions=True)
            await self.settle()
            await self._give_back_unfinished()
            self._check_outcome()
            await self.queue.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Scrapy runs ``spider_closed`` handlers concurrently; reporters wait for this."""
        await self._closed.wait()

    def add_flushable(self, flushable: Flushable) -> None:
        self._flushables.append(flushable)

    def remove_flushable(self, flushable: Flushable) -> None:
        with contextlib.suppress(ValueError):
            self._flushables.remove(flushable)

    def request_settle(self) -> None:
        """A sink's own cadence wants a flush before the next regular round."""
        self._settle_now.set()

    def fail_worker(self, reason: str) -> None:
        """Mark this worker's run as failed: ``scrapy crawl`` exits non-zero."""
        if self.stats.get_value("hydra/worker/failed") is None:
            self.stats.set_value("hydra/worker/failed", reason)

    # -- intake ------------------------------------------------------------

    async def push(self, payloads: list[str]) -> None:
        await self._queue().push(payloads)

    async def consume(self) -> AsyncIterator[TaskRun]:
        """Yield runs of valid messages while the worker has room for them.

        Invalid and poison messages are dead-lettered here; the caller only sees
        work it can do. Returns when nothing has been claimable, delayed or held
        for ``HYDRA_IDLE_CLOSE_SECONDS`` (an embedded queue: once drained), and
        when the worker stops.
        """
        queue = self._queue()
        backoff = 0.025
        idle_since: float | None = None
        while not self._stopping.is_set():
            room = self._room()
            if room <= 0:
                idle_since = None
                await self._wait_for_change(1.0)
                continue
            now = time.monotonic()
            try:
                result = await queue.claim(room)
            except Exception as exc:  # the queue server is away: wait, don't exit
                self._queue_unreachable(exc)
                idle_since = None if self.runs else (idle_since or now)
                if self._idle_expired(queue.shared, now - idle_since if idle_since else 0):
                    self.fail_worker("queue_unreachable")
                    return
                await self._wait_for_change(self.config.queue_poll_max_seconds)
                continue
            await self._queue_reachable()
            self.stats.inc_value("hydra/queue/reclaimed", result.reclaimed)
            if not result.deliveries:
                busy = bool(self.runs) or result.delayed > 0
                idle_since = None if busy else (idle_since or now)
                if idle_since is not None and self._idle_expired(queue.shared, now - idle_since):
                    return
                backoff = min(backoff * 2, self.config.queue_poll_max_seconds)
                await self._wait_for_change(backoff)
                continue
            backoff, idle_since = 0.025, None
            for delivery in result.deliveries:
                run = self._admit(delivery)
                if run is not None:
                    yield run

    def _admit(self, delivery: Delivery) -> TaskRun | None:
        kind = self.kind
        assert kind is not None
        self.stats.inc_value("hydra/queue/claimed")
        if delivery.redeliveries:
            self.stats.inc_value("hydra/queue/redelivered")
        now = time.monotonic()
        run = TaskRun(
            delivery, kind, claimed_at=now, deadline=now + self.config.task_timeout_seconds
        )
        self.runs[run.lease_id] = run
        reason: DeadLetterReason = "invalid_message"
        details: dict[str, Any] = {}
        try:
            if delivery.redeliveries >= self.config.queue_max_deliveries:
                reason = "poison"
                raise ValueError(f"reclaimed from dead workers {delivery.redeliveries} times")
            if delivery.undecodable:
                details["payload_undecodable"] = True
                raise ValueError("payload is not UTF-8 (kept backslash-escaped)")
            size = len(delivery.payload.encode("utf-8", "surrogatepass"))
            if size > self.config.max_message_bytes:
                raise ValueError(
                    f"message of {size} bytes exceeds HYDRA_MAX_MESSAGE_BYTES "
                    f"({self.config.max_message_bytes})"
                )
            run.message = kind.parse(delivery.payload)
            kind.admitted(run)
        except InvalidMessage as exc:
            self._reject(run, exc.reason, str(exc), details)
            return None
        except ValidationError as exc:
            self._reject(run, reason, validation_error_text(exc), details)
            return None
        except (Exception, RecursionError) as exc:  # anything else wrong with this message
            self._reject(run, reason, f"{type(exc).__name__}: {exc}"[:2000], details)
            return None
        return run

    def _reject(
        self, run: TaskRun, reason: DeadLetterReason, error: str, details: dict[str, Any]
    ) -> None:
        logger.warning(
            "Dead-lettering message from %s (%s): %s",
            run.delivery.source,
            reason,
            self.config.redactor.text(error),
        )
        entry = self.dead_letter_entry(
            reason,
            error,
            run.delivery.payload,
            kind=run.kind.name,
            message_id=run.delivery.message_id,
            details=details,
        )
        self._finish(run, Outcome(deadletter=[entry]))

    def dead_letter_entry(
        self, reason: DeadLetterReason, error: str, payload: str, **fields: Any
    ) -> str:
        self.stats.inc_value(f"hydra/deadletter/{reason}")
        entry = DeadLetterEntry.build(
            reason=reason,
            error=error,
            source=self.queue.key if self.queue is not None else "",
            payload=payload,
            max_bytes=self.config.max_message_bytes,
            redactor=self.config.redactor,
            worker=self.worker_id,
            **fields,
        )
        return entry.model_dump_json()

    # -- attribution: what belongs to which run ------------------------------

    def run_for(self, lease: object) -> TaskRun | None:
        """The live (held, not yet finished) run of a lease id, else ``None``."""
        run = self.runs.get(lease) if isinstance(lease, str) else None
        return run if run is not None and not run.finished else None

    def attach(self, run: TaskRun, output: Any) -> None:
        """Count a request or item produced for ``run``; requests inherit its lease."""
        if isinstance(output, Request):
            output.meta.setdefault("hydra_lease", run.lease_id)
            run.outstanding += 1
            self._route_errback(output)
        elif output is not None:
            run.items_pending += 1
            run.items_emitted += 1
            self._item_owner[id(output)] = run

    def _route_errback(self, request: Request) -> None:
        """Every request of a run ends in the spider's ``hydra_errback`` if it fails,
        which settles the run and calls the request's own errback, if any."""
        spider = self.crawler.spider
        errback = getattr(spider, "hydra_errback", None)
        if errback is None or request.errback == errback:
            return
        if request.errback is not None:
            own = request.errback
            name = getattr(own, "__name__", "")
            request.meta["hydra_errback"] = name if getattr(spider, name, None) == own else own
        request.errback = errback

    def request_done(self, request: Request) -> None:
        """The request's callback or errback has run (or it was dropped)."""
        meta = request.meta
        lease = meta.get("hydra_lease")
        if lease is None or meta.get("hydra_done"):
            return
        meta["hydra_done"] = True
        run = self.runs.get(lease)
        if run is not None:
            run.outstanding -= 1
            self._maybe_complete(run)

    def start_finished(self, run: TaskRun) -> None:
        """The spider's ``start_task`` for ``run`` is exhausted."""
        run.started = True
        self._maybe_complete(run)

    def fail(self, run: TaskRun, failure: RunFailure) -> None:
        """A request or callback of ``run`` failed: its kind decides what follows."""
        if run.finished:
            return
        try:
            outcome = run.kind.on_failure(run, failure)
        except Exception as exc:  # a bug in the kind must not leave the run hanging
            logger.exception("Task kind %s failed to handle %s", run.kind.name, failure.reason)
            entry = self.dead_letter_entry(
                "task_failed", f"{failure.reason}: {failure.detail}; then {exc!r}",
                run.delivery.payload, kind=run.kind.name, message_id=run.delivery.message_id,
            )  # fmt: skip
            outcome = Outcome(deadletter=[entry])
        self._finish(run, outcome)

    def _maybe_complete(self, run: TaskRun) -> None:
        if run.finished or not run.started or run.outstanding > 0:
            return
        try:
            outcome = run.kind.on_complete(run)
        except Exception as exc:
            logger.exception("Task kind %s failed to complete a run", run.kind.name)
            self.fail(run, RunFailure("task_error", repr(exc)))
            return
        self._finish(run, outcome)

    def _finish(self, run: TaskRun, outcome: Outcome) -> None:
        run.finished = True
        run.outcome = outcome
        self._changed.set()

    # -- signals -------------------------------------------------------------

    def item_scraped(self, item: Any, response: Any, spider: Spider) -> None:
        self._item_done(item, response)

    def item_dropped(self, item: Any, response: Any, exception: Exception, spider: Spider) -> None:
        self._item_done(item, response)

    def item_error(self, item: Any, response: Any, spider: Spider, failure: Failure) -> None:
        run = self._owner(item, response)
        if run is not None:
            row = self.row_json(item)
            entry = self.dead_letter_entry(
                "item_error", failure.getErrorMessage(), row, kind=run.kind.name,
                message_id=run.delivery.message_id,
            )  # fmt: skip
            self._add_deadletter(run, entry)
        self._item_done(item, response)

    def request_dropped(self, request: Request, spider: Spider) -> None:
        self.request_done(request)

    def spider_error(self, failure: Failure, response: Any, spider: Spider) -> None:
        request = getattr(response, "request", None)
        run = self.run_for(request.meta.get("hydra_lease")) if request is not None else None
        if run is not None:
            name = type(failure.value).__name__
            self.fail(run, RunFailure("callback_error", f"{name}: {failure.value}", request))

    def owner_of(self, item: Any) -> TaskRun | None:
        """The run an item in the pipelines belongs to (for the sink rows)."""
        return self._item_owner.get(id(item))

    def _owner(self, item: Any, response: Any) -> TaskRun | None:
        run = self._item_owner.get(id(item))
        if run is None:
            request = getattr(response, "request", None)
            if request is not None:
                run = self.runs.get(request.meta.get("hydra_lease"))
        return run

    def _item_done(self, item: Any, response: Any) -> None:
        run = self._owner(item, response)
        self._item_owner.pop(id(item), None)
        if run is not None:
            run.items_pending -= 1
            if run.items_pending == 0:
                run.settled_cursor = run.cursor
                if run.finished:
                    self._changed.set()

    # -- background loops -----------------------------------------------------

    async def renew(self) -> None:
        if self.queue is None or not self.runs:
            return
        lost = await self.queue.renew(list(self.runs))
        self.stats.inc_value("hydra/queue/lease_renewals")
        for lease_id in lost:
            run = self.runs.pop(lease_id, None)
            if run is None:
                continue
            # another worker has (or will have) the message: stop ours, never ack it
            run.finished = True
            self.stats.inc_value("hydra/queue/lease_lost")
            logger.warning(
                "Lost the lease %s (renewed too late?): its run is stopped and not acked", lease_id
            )
        if lost:
            self._changed.set()

    async def watchdog(self) -> None:
        """Deadlines: no run is renewed forever."""
        now = time.monotonic()
        timeout = self.config.task_timeout_seconds
        abandoned = []
        for run in list(self.runs.values()):
            if not run.finished and now > run.deadline:
                self.stats.inc_value("hydra/task/timeouts")
                self.fail(run, RunFailure("timeout", f"run not finished within {timeout:g} s"))
            elif run.finished and run.items_pending > 0 and now > run.deadline + timeout:
                abandoned.append(run)  # its items never came back from the pipelines
        if abandoned and self.queue is not None:
            for run in abandoned:
                self.runs.pop(run.lease_id, None)
                logger.error(
                    "Giving back %s: its items are stuck in the item pipelines", run.lease_id
                )
            self.stats.inc_value("hydra/task/abandoned", len(abandoned))
            await self.queue.release([run.lease_id for run in abandoned])

    async def _settle_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_now.wait(), self.config.ack_interval_seconds)
            self._settle_now.clear()
            try:
                await self.settle()
            except Exception:
                logger.exception("Settling acknowledgements failed; retrying")

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
            if self._stopping.is_set():
                return
            try:
                await job()
            except Exception as exc:
                logger.warning("Hydra ledger job %s failed: %s", job.__name__, exc)

    # -- helpers -----------------------------------------------------------

    def _queue(self) -> TaskQueue:
        if self.queue is None:
            raise RuntimeError("TaskLedger has no queue: does the spider set task_kind?")
        return self.queue

    def _room(self) -> int:
        """Free run slots; none while a sink fails. Finished runs awaiting their ack do
        not take a slot, up to a bound on what one worker holds."""
        if self.sink_failing:
            return 0
        working = sum(1 for run in self.runs.values() if not run.finished)
        held_limit = 4 * self.config.queue_prefetch
        return min(self.config.queue_prefetch - working, held_limit - len(self.runs))

    def _idle_expired(self, shared: bool, idle_for: float) -> bool:
        if not shared:
            return True
        limit = self.config.idle_close_seconds
        return limit > 0 and idle_for >= limit

    async def _wait_for_change(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _queue_unreachable(self, exc: Exception) -> None:
        self.stats.inc_value("hydra/queue/errors")
        now = time.monotonic()
        if self._queue_down_since is None:
            self._queue_down_since = now
        if now - self._queue_last_warned >= 30 or self._queue_last_warned == 0:
            self._queue_last_warned = now
            idle = self.config.idle_close_seconds
            logger.warning(
                "Waiting for the queue %s: %s: %s (down %.0f s; retrying every %g s%s)",
                self._queue().describe(),
                type(exc).__name__,
                self.config.redactor.text(str(exc)),
                now - self._queue_down_since,
                self.config.queue_poll_max_seconds,
                f"; giving up after {idle:g} s idle" if idle else "",
            )

    async def _queue_reachable(self) -> None:
        if self._queue_down_since is not None:
            logger.info(
                "The queue is reachable again after %.0f s",
                time.monotonic() - self._queue_down_since,
            )
            self._queue_down_since = None
            self._queue_last_warned = 0.0
        if not self._queue_ever_up:
            self._queue_ever_up = True
            queue = self._queue()
            for warning in await queue.server_warnings():
                logger.warning("%s", warning)
            await queue.recover()
