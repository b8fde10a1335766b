"""What other systems and the jobs themselves tell the scheduler, through its streams.

Triggers (:class:`TriggerMessage`) start tasks; status events
(:class:`JobStatusEvent`) are the jobs' heartbeats, progress and ends. Both are
untrusted input: a message that does not validate is dead-lettered with the
reason and its raw payload, and the rest flows on. Entries are acknowledged
after they were applied (:mod:`.feeds`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from crawlers.db.scheduler_models import JobState
from crawlers.models.job_status import FIRST_ITEMS_KEY, JobStatusEvent, TriggerMessage
from crawlers.models.validation import validation_error_text
from crawlers.services.scheduler.feeds import Entry

if TYPE_CHECKING:
    from crawlers.services.scheduler.service import Scheduler

logger = logging.getLogger(__name__)


class StreamIntake:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.feeds = scheduler.feeds
        self.store = scheduler.store

    async def take_triggers(self, now: datetime) -> None:
        """Trigger messages from other systems; a bad one is dead-lettered, the rest run.
        The job's ID comes from the stream entry's, so a redelivered entry (a replica
        died before acknowledging it) does not run the task twice."""
        source = self.scheduler.config.scheduler_trigger_stream
        try:
            entries = await self.feeds.triggers()
        except Exception as exc:
            logger.warning("Trigger stream unreadable: %s", type(exc).__name__)
            return
        for entry in entries:
            try:
                message = TriggerMessage.model_validate_json(entry.raw)
            except ValidationError as exc:
                await self.feeds.dead_letter(source, entry.raw, validation_error_text(exc))
                continue
            task = self.scheduler.configs.get(message.task)
            if task is None:
                await self.feeds.dead_letter(source, entry.raw, f"no task {message.task!r}")
                continue
            job_id = f"{task.name}-x{entry.id}"
            if await self.store.job(job_id) is None:
                args = dict(message.args)
                await self.scheduler.enqueue(task, now, attempt=0, args=args, job_id=job_id)
        await self.feeds.done("triggers", entries)

    async def take_status(self, now: datetime) -> None:
        try:
            entries = await self.feeds.status()
        except Exception as exc:
            logger.warning("Job status stream unreadable: %s", type(exc).__name__)
            return
        for entry in entries:
            await self._on_status(entry, now)
        await self.feeds.done("status", entries)

    async def _on_status(self, entry: Entry, now: datetime) -> None:
        try:
            event = JobStatusEvent.model_validate_json(entry.raw)
        except ValidationError as exc:
            stream = self.scheduler.config.job_status_stream
            await self.feeds.dead_letter(stream, entry.raw, validation_error_text(exc))
            return
        items = {FIRST_ITEMS_KEY: event.items} if event.items else {}
        if event.event != "finished":  # the worker's heartbeat, with its progress
            await self.store.heartbeat(event.job_id, now, stats={**event.stats, **items})
            return
        stats: dict[str, Any] = {"finish_reason": event.finish_reason, **event.stats, **items}
        if event.job_id in self.scheduler.running:  # its process' exit decides
            self.scheduler.reported[event.job_id] = stats
            return
        record = await self.store.job(event.job_id)
        if record is None or record.state != "running":
            return
        task = self.scheduler.configs.get(record.task_name)
        problems = task.expect.violations(stats) if task is not None else []
        state: JobState = "failed" if problems else "succeeded"
        reason = "; ".join(problems)
        await self.scheduler.settle(record.job_id, record.task_name, state, reason, stats, now)
