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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from scrapy import Request, Spider, signals
from scrapy.utils.misc import build_from_crawler, load_object

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.extensions.intake import Intake
from crawlers.extensions.settlement import Settlement
from crawlers.models import DeadLetterEntry
from crawlers.queues import TaskQueue, build_queue, new_worker_id
from crawlers.tasks.base import Outcome, RunFailure, TaskKind, TaskRun
from crawlers.topics.events import EventStream

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure

    from crawlers.models.deadletter import DeadLetterReason
    from crawlers.sinks import Rejection

logger = logging.getLogger(__name__)

#: signal sent with ``entry`` (a ``DeadLetterEntry``, redacted) for every dead letter the
#: ledger builds (the Sentry reporter listens)
dead_lettered = object()


class Flushable(Protocol):
    """What the ledger flushes before acks (the sink pipeline)."""

    def dirty(self) -> bool: ...

    async def flush(self) -> list[Rejection]: ...


class TaskLedger(Intake, Settlement):
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
        self.events: EventStream | None = None
        self._changed = asyncio.Event()
        self._settle_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._warned_unattributed = False
        Intake.__init__(self)
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
        route = self.kind.route(spider)
        queue = build_queue(
            self.crawler, self.kind.queue_key(), worker_id=self.worker_id, route=route
        )
        await queue.open()  # no network I/O: a server that is away shows in the loops
        self.queue = queue
        self.kind.worker_id = self.worker_id
        if queue.shared and self.config.redis_url:
            events = EventStream.from_crawler(self.crawler)
            await events.open()
            self.events = events
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
            # each step on its own: a failure of one must not skip giving messages back
            for step in (self.settle, self._give_back_unfinished):
                try:
                    await step()
                except Exception:
                    logger.exception("Closing the ledger: %s failed", step.__name__)
                    self.fail_worker("shutdown_error")
            self._check_outcome()
            await self.queue.close()
            if self.events is not None:
                await self.events.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Scrapy runs ``spider_closed`` handlers concurrently; reporters wait for this."""
        await self._closed.wait()

    def add_flushable(self, flushable: Flushable) -> None:
        self._flushables.append(flushable)
        self._had_flushables = True

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
        self.crawler.signals.send_catch_log(dead_lettered, entry=entry)
        return entry.model_dump_json()

    # -- attribution: what belongs to which run ------------------------------

    def run_for(self, lease: object) -> TaskRun | None:
        """The live (held, not yet finished) run of a lease id, else ``None``."""
        run = self.runs.get(lease) if isinstance(lease, str) else None
        return run if run is not None and not run.finished else None

    def attach(self, run: TaskRun, output: Any) -> None:
        """Count a request or item produced for ``run``; requests take its lease."""
        if isinstance(output, Request):
            meta = output.meta
            meta["hydra_lease"] = run.lease_id
            # bookkeeping of the request it may have been copied from does not apply
            meta.pop("hydra_done", None)
            meta.pop("hydra_outputs_attributed", None)
            run.outstanding += 1
            self._route_errback(output)
        elif output is not None:
            run.items_pending += 1
            run.items_emitted += 1
            self._item_owner[id(output)] = run
            run.item_ids.add(id(output))

    def _route_errback(self, request: Request) -> None:
        """Every request of a run ends in the spider's ``hydra_errback`` if it fails,
        which settles the run and calls the request's own errback, if any."""
        spider = self.crawler.spider
        errback = getattr(spider, "hydra_errback", None)
        if errback is None:
            return
        if request.errback is None:
            request.meta.pop("hydra_errback", None)  # copied meta, not this request's
        elif request.errback != errback:
            own = request.errback
            name = getattr(own, "__name__", "")
            request.meta["hydra_errback"] = name if getattr(spider, name, None) == own else own
        request.errback = errback

    def _forget(self, run: TaskRun) -> None:
        """Drop a run that was acked, lost or given back, and what pointed to it."""
        self.runs.pop(run.lease_id, None)
        for item_id in run.item_ids:
            if self._item_owner.get(item_id) is run:
                del self._item_owner[item_id]
        run.item_ids.clear()

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
            elif self.runs and not self._warned_unattributed:
                self._warned_unattributed = True
                logger.warning(
                    "An item left the pipelines as a different object than the one yielded "
                    "from start(): its run cannot be told, and is settled only at its "
                    "deadline. Item pipelines should return the item they were given."
                )
        return run

    def _item_done(self, item: Any, response: Any) -> None:
        run = self._owner(item, response)
        self._item_owner.pop(id(item), None)
        if run is not None:
            run.item_ids.discard(id(item))
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
            run = self.runs.get(lease_id)
            if run is None:
                continue
            self._forget(run)
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
        for run in list(self.runs.values()):
            timeout = run.kind.timeout_seconds()
            if not run.finished and now > run.deadline:
                self.stats.inc_value("hydra/task/timeouts")
                self.fail(run, RunFailure("timeout", f"run not finished within {timeout:g} s"))
            elif run.items_pending > 0 and now > run.deadline + timeout:
                self._abandon(run)

    def _abandon(self, run: TaskRun) -> None:
        """Items that never came back from the pipelines (a stuck pipeline, or one that
        returned another object for a start() item): the run fails from what is known
        to be through, as another attempt, so a run that keeps sticking ends in the
        dead-letter instead of going round for ever."""
        logger.error("Items of %s are stuck in the item pipelines: failing the run", run.lease_id)
        self.stats.inc_value("hydra/task/abandoned")
        for item_id in run.item_ids:
            self._item_owner.pop(item_id, None)
        run.item_ids.clear()
        run.items_pending = 0
        run.cursor = run.settled_cursor
        run.finished = False
        self.fail(run, RunFailure("abandoned", "items stuck in the item pipelines"))

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
