"""The ledger's intake: claim messages while there is room, admit or dead-letter each.

Kept apart from the attribution and settlement code of the ledger because it
is where untrusted input enters: every message is checked (size, encoding,
poison count, its kind's ``parse``) before a spider sees it, and anything
wrong with it is dead-lettered with the reason while the intake goes on. The
queue server being away is never fatal here: the loop waits, says what it
waits for, and recovers; ``HYDRA_IDLE_CLOSE_SECONDS`` bounds the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from crawlers.models import validation_error_text
from crawlers.tasks.base import InvalidMessage, Outcome, TaskKind, TaskRun

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from crawlers.config import HydraConfig
    from crawlers.models.deadletter import DeadLetterReason
    from crawlers.queues import Delivery, TaskQueue

logger = logging.getLogger(__name__)


class Intake:
    """Mixin of :class:`~crawlers.extensions.task_ledger.TaskLedger`."""

    config: HydraConfig
    stats: StatsCollector
    queue: TaskQueue | None
    kind: TaskKind | None
    runs: dict[str, TaskRun]
    _changed: asyncio.Event
    _stopping: asyncio.Event

    def __init__(self) -> None:
        self._queue_down_since: float | None = None
        self._queue_last_warned = 0.0
        self._queue_checked = False

    # provided by the ledger and its settlement
    sink_failing: bool
    sink_failing_for: float

    def _queue(self) -> TaskQueue:
        raise NotImplementedError

    def fail_worker(self, reason: str) -> None:
        raise NotImplementedError

    def dead_letter_entry(self, reason: Any, error: str, payload: str, **fields: Any) -> str:
        raise NotImplementedError

    def _finish(self, run: TaskRun, outcome: Outcome) -> None:
        raise NotImplementedError

    async def push(self, payloads: list[str]) -> None:
        await self._queue().push(payloads)

    async def consume(self) -> AsyncIterator[TaskRun]:
        """Yield runs of valid messages while the worker has room for them.

        Invalid and poison messages are dead-lettered here; the caller only sees
        work it can do. Returns when nothing has been claimable, delayed or held
        for ``HYDRA_IDLE_CLOSE_SECONDS`` (an embedded queue: once drained), when
        a sink has failed for ``HYDRA_SINK_GIVE_UP_SECONDS``, and when the worker
        stops.
        """
        queue = self._queue()
        backoff = 0.025
        idle_since: float | None = None
        while not self._stopping.is_set():
            room = self._room()
            if room <= 0:
                idle_since = None
                if self._sink_given_up():
                    return
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
            if self._stopping.is_set() and result.deliveries:
                # a claim that was in flight while the ledger gave its runs back: these
                # were never admitted, so they go straight back too (not left leased)
                with contextlib.suppress(Exception):  # else they return at lease expiry
                    await queue.release([d.lease_id for d in result.deliveries])
                return
            # every delivery is held by this worker from here on: admit them all
            # before yielding, so none is forgotten if the consumer stops early
            admitted = [self._admit(delivery) for delivery in result.deliveries]
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
            for run in admitted:
                if run is not None:
                    yield run

    def _admit(self, delivery: Delivery) -> TaskRun | None:
        kind = self.kind
        assert kind is not None
        self.stats.inc_value("hydra/queue/claimed")
        if delivery.redeliveries:
            self.stats.inc_value("hydra/queue/redelivered")
        now = time.monotonic()
        deadline = now + kind.timeout_seconds()
        run = TaskRun(delivery, kind, claimed_at=now, deadline=deadline)
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

    def _room(self) -> int:
        """Free run slots; none while a sink fails. Finished runs awaiting their ack do
        not take a slot, up to a bound on what one worker holds."""
        if self.sink_failing:
            return 0
        working = sum(1 for run in self.runs.values() if not run.finished)
        held_limit = 4 * self.config.queue_prefetch
        return min(self.config.queue_prefetch - working, held_limit - len(self.runs))

    def _sink_given_up(self) -> bool:
        limit = self.config.sink_give_up_seconds
        if self.sink_failing and limit > 0 and self.sink_failing_for >= limit:
            logger.error(
                "Sinks have failed for %.0f s (HYDRA_SINK_GIVE_UP_SECONDS): this worker "
                "stops; its messages go back from their last checkpoints",
                self.sink_failing_for,
            )
            self.fail_worker("sink_failed")
            return True
        return False

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
            down = time.monotonic() - self._queue_down_since
            logger.info("The queue is reachable again after %.0f s", down)
            self._queue_down_since = None
            self._queue_last_warned = 0.0
        if self._queue_checked:
            return
        queue = self._queue()
        try:  # best effort: never let a check cost the deliveries just claimed
            for warning in await queue.server_warnings():
                logger.warning("%s", warning)
            await queue.recover()
        except Exception as exc:
            logger.warning("Checking the queue server failed (%s); will try again", exc)
            return
        self._queue_checked = True
