"""Seed 003's fetch tasks: one job for one channel, from S3, FTP (and later web/API).

Other systems push the seed's JSON onto one list (``hydra:fetch:tasks``); every
fetch worker claims from it and routes what is not its source type to that
type's own ready list in the same claim (see ``crawlers/queues/redis_scripts.py``),
so no task waits for a router process. A job's expected failures (a source that
refuses the credentials, a file that cannot be stored) end it with a *failed*
status message, published like a success; only what Hydra itself could not do
(its database, store or topics unreachable) requeues the task, after a delay,
up to ``HYDRA_FETCH_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from crawlers.items import FetchedFileItem, JobResultItem
from crawlers.models import FETCH_TASK
from crawlers.queues.base import Requeue, Route
from crawlers.tasks.base import InvalidMessage, Outcome, RunFailure, TaskKind, TaskRun

if TYPE_CHECKING:
    from scrapy import Spider

#: every source type of seed 003, in the order of their typed ready lists
SOURCE_TYPES = ("s3", "ftp", "html", "api")


class FetchTaskKind(TaskKind):
    name = "fetch_task"

    def queue_key(self) -> str:
        return self.config.fetch_queue_key

    def timeout_seconds(self) -> float:
        return self.config.fetch_task_timeout_seconds

    def route(self, spider: Spider) -> Route | None:
        wanted = frozenset(getattr(spider, "source_types", ()))
        return Route("source_type", SOURCE_TYPES, wanted) if wanted else None

    def parse(self, payload: str) -> Any:
        task = FETCH_TASK.validate_json(payload)
        spider = self.crawler.spider
        handled = getattr(spider, "source_types", frozenset(SOURCE_TYPES))
        if task.source_type not in handled:
            name = getattr(spider, "name", "?")
            raise InvalidMessage(
                f"source_type {task.source_type!r} is not handled by `scrapy crawl {name}` "
                f"(it handles {', '.join(sorted(handled))})"
            )
        return task

    def admitted(self, run: TaskRun) -> None:
        self._inc("hydra/fetch/jobs_received")
        if run.delivery.redeliveries:
            self._inc("hydra/fetch/jobs_redelivered")

    def on_failure(self, run: TaskRun, failure: RunFailure) -> Outcome:
        """Hydra could not finish the job (its own database, store or topics, a bug, the
        deadline): the task goes back for another attempt, later."""
        task = run.message
        attempt = task.attempt + 1
        self._inc(f"hydra/fetch/retried/{failure.reason}")
        if attempt >= self.config.fetch_max_attempts:
            self._inc("hydra/fetch/jobs_deadlettered")
            entry = self.dead_letter(run, "task_failed", f"{failure.reason}: {failure.detail}")
            return Outcome(deadletter=[entry])
        again = json.loads(run.delivery.payload)
        again["attempt"] = attempt
        delay = self.retry_delay(attempt)
        return Outcome(requeue=[Requeue(json.dumps(again), delay)])

    def row_key(self, item: Any) -> str | None:
        if isinstance(item, FetchedFileItem):
            return f"{item.job_id}/{item.path}"
        if isinstance(item, JobResultItem):
            return f"{item.job_id}/result"
        return None

    @classmethod
    def replay_payload(cls, payload: str) -> str:
        task = json.loads(payload)
        task["attempt"] = 0
        FETCH_TASK.validate_json(json.dumps(task))
        return json.dumps(task)

    def succeeded(self, stats: dict[str, Any]) -> bool:
        return int(stats.get("hydra/fetch/jobs_reported", 0)) > 0

    def progress(self, stats: dict[str, Any]) -> tuple[str, int]:
        return "files checked", int(stats.get("hydra/fetch/files_checked", 0))

    def summary_lines(self, stats: dict[str, Any]) -> list[str]:
        def count(key: str) -> int:
            return int(stats.get(f"hydra/fetch/{key}", 0))

        return [
            f"Jobs received:     {count('jobs_received')} "
            f"(succeeded {count('jobs_succeeded')}, failed {count('jobs_failed')})",
            f"Files checked:     {count('files_checked')} "
            f"(stored {count('files_uploaded')}, unchanged {count('files_unchanged')}, "
            f"refused {count('files_refused')})",
            f"Bytes stored:      {count('bytes_uploaded')}",
        ]

    def _inc(self, key: str, count: int = 1) -> None:
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(key, count)
