"""The ledger's settle round: flush the sinks, then ack what is ready and checkpoint the rest.

Kept apart from the intake and attribution code of ``task_ledger`` because it
is the one place that decides what counts as stored. The rules:

- A run is acknowledged only after a flush that began after its last item left
  the pipelines succeeded (runs that emitted no item need no flush).
- A held run's *checkpoint* (its kind's resume payload) is recorded with its
  lease only after such a flush, so a reclaimed message resumes after what is
  durable and nothing before it is fetched twice.
- A failed flush voids everything since the last good one: nothing is acked or
  checkpointed, the leases are kept (and renewed), the sinks keep their rows,
  the intake pauses, and the flush is retried with back-off.
- Rows a sink rejects are dead-lettered (``sink_rejected``) with their run's ack
  or next checkpoint; they never hold the run up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from crawlers.queues import Acknowledgement, Checkpoint, TaskQueue

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector

    from crawlers.config import HydraConfig
    from crawlers.extensions.task_ledger import Flushable
    from crawlers.sinks import Rejection
    from crawlers.tasks.base import Outcome, TaskKind, TaskRun
    from crawlers.topics.events import EventStream

logger = logging.getLogger(__name__)


class Settlement:
    """Mixin of :class:`~crawlers.extensions.task_ledger.TaskLedger`."""

    config: HydraConfig
    stats: StatsCollector
    queue: TaskQueue | None
    kind: TaskKind | None
    runs: dict[str, TaskRun]
    _flushables: list[Flushable]
    _changed: asyncio.Event
    _stopping: asyncio.Event
    #: where runs report progress and outcomes (``None``: nobody listens, embedded)
    events: EventStream | None

    def __init__(self) -> None:
        self._settle_lock = asyncio.Lock()
        self.sink_failures = 0
        self._sink_retry_at = 0.0
        self._sink_failing_since = 0.0
        #: a spider without sinks (its pipelines write durably themselves) never had any
        self._had_flushables = False

    @property
    def sink_failing(self) -> bool:
        return self.sink_failures > 0

    @property
    def sink_failing_for(self) -> float:
        """Seconds since the first of the current run of failed flushes."""
        return time.monotonic() - self._sink_failing_since if self.sink_failing else 0.0

    def dead_letter_entry(self, reason: Any, error: str, payload: str, **fields: Any) -> str:
        raise NotImplementedError  # provided by TaskLedger

    def fail_worker(self, reason: str) -> None:
        raise NotImplementedError  # provided by TaskLedger

    def _forget(self, run: TaskRun) -> None:
        raise NotImplementedError  # provided by TaskLedger

    def _finish(self, run: TaskRun, outcome: Outcome) -> None:
        raise NotImplementedError  # provided by TaskLedger

    def _complete_exhausted(self) -> None:
        """At shutdown, runs whose every item is through the pipelines end as complete
        (their last request may never be marked done once the engine stops): giving
        them back from an older checkpoint would store their tail twice."""
        for run in self.runs.values():
            if run.finished or run.items_pending:
                continue
            try:
                exhausted = run.kind.exhausted(run)
                outcome = run.kind.on_complete(run) if exhausted else None
            except Exception:
                logger.exception("Task kind %s failed to complete a run", run.kind.name)
                continue
            if outcome is not None:
                self._finish(run, outcome)

    async def settle(self, *, final: bool = False) -> None:
        """One round. ``final``: flush even without ready runs (a closing sink)."""
        async with self._settle_lock:
            queue = self.queue
            if queue is None:
                return
            if final or self._stopping.is_set():
                self._complete_exhausted()
            ready = [run for run in self.runs.values() if run.ackable]
            # what this round's flush makes durable, to report before any ack
            progress = {
                run: run.settled_cursor
                for run in self.runs.values()
                if run.settled_cursor > run.reported_cursor
            }
            resumable = self._checkpoint_candidates()
            dirty = any(flushable.dirty() for flushable in self._flushables)
            unstored = any(run.items_emitted > run.items_stored for run in ready)
            needs_flush = final or dirty or unstored or bool(resumable)
            flushed = True
            if needs_flush and self._flushables:
                flushed = await self._flush(final)
            elif needs_flush and (self.sink_failing or self._had_flushables):
                # the sinks were closed (SinkPipeline.close_spider removes them after
                # its final flush) while failing, or with rows the final flush missed:
                # what the runs emitted since is not durable anywhere
                flushed = False
            if not flushed:  # only runs with nothing left to make durable are acked
                ready = [run for run in ready if run.items_emitted <= run.items_stored]
                resumable = {}
                progress = {}
            if not await self._publish_events(progress, ready):
                return  # nothing is acked or checkpointed before its events are out
            acks = [
                Acknowledgement(
                    run.lease_id,
                    run.outcome.requeue,
                    [*run.outcome.deadletter, *run.deadletter_pending],
                )
                for run in ready
            ]
            pending = [
                run for run in self.runs.values() if run.deadletter_pending and not run.finished
            ]
            checkpoint_runs = list({*resumable, *pending})
            checkpoints = [
                Checkpoint(run.lease_id, resumable.get(run), list(run.deadletter_pending))
                for run in checkpoint_runs
            ]
            # checkpoints first: they protect the most rows, so the window between a
            # flush and the record of what it made durable is as short as it can be
            if checkpoints:
                await self._record_checkpoints(queue, checkpoint_runs, checkpoints)
            if acks:
                await self._acknowledge(queue, ready, acks)
            self._changed.set()

    async def _publish_events(self, progress: dict[TaskRun, int], ready: list[TaskRun]) -> bool:
        if self.events is None:
            return True
        messages: list[str] = []
        try:
            for run, through in progress.items():
                messages.extend(run.kind.progress_events(run, through))
        except Exception:
            logger.exception("Task kind failed to describe its progress")
        for run in ready:
            messages.extend(run.outcome.events)
        if messages:
            try:
                await self.events.publish(messages)
            except Exception as exc:  # retried next round; the leases are still renewed
                logger.warning("Publishing %d events failed (%s); retrying", len(messages), exc)
                self.stats.inc_value("hydra/events/errors")
                return False
            self.stats.inc_value("hydra/events/published", len(messages))
        for run, through in progress.items():
            run.reported_cursor = through
        return True

    async def _record_checkpoints(
        self, queue: TaskQueue, runs: list[TaskRun], checkpoints: list[Checkpoint]
    ) -> None:
        try:
            recorded = await queue.checkpoint(checkpoints)
        except Exception as exc:  # retried next round; the leases are still renewed
            logger.warning("Recording %d checkpoints failed (%s)", len(checkpoints), exc)
            self.stats.inc_value("hydra/queue/errors")
            return
        for run, checkpoint, held in zip(runs, checkpoints, recorded, strict=True):
            del run.deadletter_pending[: len(checkpoint.deadletter)]
            if checkpoint.payload is not None:
                run.checkpointed = checkpoint.payload
                self.stats.inc_value("hydra/queue/checkpoints")
            if not held and run.lease_id in self.runs:
                self._forget(run)
                run.finished = True
                self.stats.inc_value("hydra/queue/lease_lost")
                logger.warning("Lost the lease %s: its run is stopped", run.lease_id)

    async def _acknowledge(
        self, queue: TaskQueue, ready: list[TaskRun], acks: list[Acknowledgement]
    ) -> None:
        try:
            acked = await queue.ack(acks)
        except Exception as exc:  # retried next round; the leases are still renewed
            logger.warning("Acknowledging %d messages failed (%s); retrying", len(acks), exc)
            self.stats.inc_value("hydra/queue/errors")
            return
        for run, held in zip(ready, acked, strict=True):
            self._forget(run)
            if held:
                self.stats.inc_value("hydra/queue/acked")
            else:
                # another worker re-runs this message: what we stored is duplicated
                self.stats.inc_value("hydra/queue/ack_lease_lost")
                logger.warning("Lease %s expired before its ack", run.lease_id)

    def _checkpoint_candidates(self) -> dict[TaskRun, str]:
        """Unfinished runs whose resume point (after the items that left the pipelines)
        moved since it was last recorded."""
        candidates: dict[TaskRun, str] = {}
        for run in self.runs.values():
            if run.finished:
                continue
            try:
                payload = run.kind.checkpoint(run)
            except Exception:
                logger.exception("Task kind %s failed to checkpoint", run.kind.name)
                continue
            if payload is not None and payload != run.checkpointed:
                candidates[run] = payload
        return candidates

    async def _flush(self, final: bool) -> bool:
        """Flush every sink at once; ``False`` (and back-off) if any failed."""
        now = time.monotonic()
        if self.sink_failing and now < self._sink_retry_at and not final:
            return False
        # what this flush makes durable: every item through the pipelines by now
        through = {run: run.items_emitted - run.items_pending for run in self.runs.values()}
        results = await asyncio.gather(
            *(flushable.flush() for flushable in self._flushables), return_exceptions=True
        )
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                self._dead_letter_rejections(result)
        if errors:
            self._sink_failed(errors[0])
            return False
        if self.sink_failing:
            logger.warning(
                "Sinks recovered after %d failed flushes (%.0f s); intake resumes",
                self.sink_failures,
                now - self._sink_failing_since,
            )
            self.sink_failures = 0
            self._changed.set()
        self.stats.inc_value("hydra/sink/flushes")
        for run, count in through.items():
            if count > run.items_stored:
                self.stats.inc_value("hydra/sink/items_stored", count - run.items_stored)
                run.items_stored = count
        return True

    def _sink_failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self.sink_failures += 1
        self.stats.inc_value("hydra/sink/flush_errors")
        delay = min(
            self.config.ack_interval_seconds * 2 ** min(self.sink_failures, 30),
            self.config.sink_retry_max_seconds,
        )
        self._sink_retry_at = now + delay
        held = len(self.runs)
        text = self.config.redactor.text(f"{type(error).__name__}: {error}")
        if self.sink_failures == 1:
            self._sink_failing_since = now
            logger.error(
                "Flushing sinks failed (%s). Nothing since the last good flush counts as "
                "stored: %d messages stay leased and unacknowledged, intake is paused, "
                "retrying in %.1f s",
                text,
                held,
                delay,
            )
        else:
            logger.warning(
                "Sinks still failing (%s, attempt %d, %.0f s): %d messages held; "
                "retrying in %.1f s",
                text,
                self.sink_failures,
                now - self._sink_failing_since,
                held,
                delay,
            )

    def _dead_letter_rejections(self, rejections: list[Rejection]) -> None:
        for rejection in rejections:
            run = self.runs.get(rejection.row.owner)
            self.stats.inc_value("hydra/sink/rows_rejected")
            if run is None:
                logger.error("A sink rejected a row of no held run: %s", rejection.error)
                continue
            row = json.dumps(dict(rejection.row.data), default=str, ensure_ascii=False)
            entry = self.dead_letter_entry(
                "sink_rejected", rejection.error, row, kind=run.kind.name,
                message_id=run.delivery.message_id, details={"row_key": rejection.row.key},
            )  # fmt: skip
            self._add_deadletter(run, entry)

    def _add_deadletter(self, run: TaskRun, entry: str) -> None:
        """Dead letters found while a run is held go out with its ack or next checkpoint."""
        run.deadletter_pending.append(entry)

    def row_json(self, item: Any) -> str:
        try:
            return json.dumps(item_row(item), default=str, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return repr(item)[: self.config.max_message_bytes]

    async def _give_back_unfinished(self) -> None:
        """On shutdown: held runs go back from their last checkpoint (the part not yet
        durable), ready or not; nothing is left leased."""
        queue = self.queue
        if queue is None or not self.runs:
            return
        leases = list(self.runs)
        try:
            released = await queue.release(leases)
        except Exception as exc:
            logger.error(
                "Could not give back %d messages (%s); they return when their leases expire",
                len(leases),
                exc,
            )
            self.fail_worker("queue_unreachable")
            return
        self.stats.inc_value("hydra/queue/released", released)
        for run in list(self.runs.values()):
            self._forget(run)

    def _check_outcome(self) -> None:
        """Failures that look like success are failures: say so, and exit non-zero."""
        stats = self.stats.get_stats()
        if self.sink_failing:
            self.fail_worker("sink_failed")
        claimed = int(stats.get("hydra/queue/claimed", 0))
        if claimed and self.kind is not None and not self.kind.succeeded(stats):
            logger.warning(
                "Nothing succeeded: %d messages claimed, none produced a stored result", claimed
            )
            self.fail_worker("nothing_succeeded")
        failed = self.stats.get_value("hydra/worker/failed")
        if failed:
            logger.error("This worker's run failed: %s", failed)


def item_row(item: Any) -> dict[str, Any]:
    """An item's fields, shallow (a dataclass's ``asdict`` would deep-copy its values)."""
    if isinstance(item, dict):
        return item
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {field.name: getattr(item, field.name) for field in dataclasses.fields(item)}
    from itemadapter import ItemAdapter

    return ItemAdapter(item).asdict()
