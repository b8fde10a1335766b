"""What every task kind declares, and the run of one leased message.

A *task kind* (a price batch, a seed-003 fetch task...) is the set of rules
for one kind of queue message: its model and queue key, how a run resumes
(its checkpoint), what a failure does (requeue a remainder, dead-letter it),
the identity of the rows it produces, and its summary lines. Kinds are
registered in ``HYDRA_TASK_KINDS_BASE`` / ``HYDRA_TASK_KINDS`` and built with
``build_from_crawler``; a spider names the kind it consumes (``task_kind``) and
says how a run starts (``start_task``). The ledger does the bookkeeping, so a
spider, however many pages a task takes, keeps none of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from crawlers.config import HydraConfig
from crawlers.queues.base import Delivery, Requeue, Route

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

    from crawlers.models.deadletter import DeadLetterReason


class InvalidMessage(ValueError):
    """A message the kind will never process; dead-lettered with ``reason``."""

    def __init__(self, error: str, reason: DeadLetterReason = "invalid_message") -> None:
        super().__init__(error)
        self.reason: DeadLetterReason = reason


@dataclass(frozen=True)
class RunFailure:
    """Why a run (or one of its requests) failed; the kind decides what follows."""

    #: short machine-readable cause: ``http_429``, ``download_error/TimeoutError``,
    #: ``callback_error``, ``forbidden_url``, ``timeout``, ``invalid_json``...
    reason: str
    detail: str
    request: Request | None = None
    #: seconds the server asked us to wait (``Retry-After``)
    retry_after: float | None = None
    #: retrying cannot help (e.g. a forbidden URL): dead-letter at once
    permanent: bool = False


@dataclass
class Outcome:
    """What happens when a run ends: follow-up messages and dead-letter entries."""

    requeue: list[Requeue] = field(default_factory=list)
    deadletter: list[str] = field(default_factory=list)
    #: messages for the event stream, published once the run's rows are durable and
    #: before its ack (so at least once)
    events: list[str] = field(default_factory=list)


@dataclass(eq=False)
class TaskRun:
    """One leased message and the bookkeeping that decides when it may be acked."""

    delivery: Delivery
    kind: TaskKind
    message: Any = None
    claimed_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0
    #: requests of this run scheduled, downloading or in their callback
    outstanding: int = 0
    #: items of this run not yet through the item pipelines
    items_pending: int = 0
    #: items of this run so far (a run without items needs no flush before its ack)
    items_emitted: int = 0
    #: items of this run a successful flush made durable
    items_stored: int = 0
    #: the spider's ``start_task`` is exhausted: no more requests come from it
    started: bool = False
    #: the outcome is decided; nothing more of this run is fetched or stored
    finished: bool = False
    outcome: Outcome = field(default_factory=Outcome)
    #: kind-specific progress, e.g. the index of the next price ID whose item is not out
    cursor: int = 0
    #: ``cursor`` as it was the last time no item of the run was in the pipelines: what
    #: the next flush makes durable, so what a checkpoint may resume after
    settled_cursor: int = 0
    #: ``settled_cursor`` as last reported on the event stream
    reported_cursor: int = 0
    #: payload last recorded as the resume point (``None``: the original)
    checkpointed: str | None = None
    #: dead letters (rejected rows) waiting for the next checkpoint or the ack
    deadletter_pending: list[str] = field(default_factory=list)
    #: ids of this run's items in the pipelines, to forget them with the run
    item_ids: set[int] = field(default_factory=set)

    @property
    def lease_id(self) -> str:
        return self.delivery.lease_id

    @property
    def ackable(self) -> bool:
        return self.finished and self.items_pending == 0


class TaskKind:
    """Base of the task kinds; subclasses set ``name`` and implement ``parse``."""

    name: ClassVar[str] = ""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        #: the consuming worker's id (set by the ledger), named in events
        self.worker_id = ""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TaskKind:
        return cls(crawler)

    def queue_key(self) -> str:
        """The list other systems push this kind's messages onto."""
        raise NotImplementedError

    def route(self, spider: Spider) -> Route | None:
        """How a queue shared with other spiders routes messages (none: one queue)."""
        return None

    def timeout_seconds(self) -> float:
        """A run still going this long after its claim is stopped."""
        return self.config.task_timeout_seconds

    def parse(self, payload: str) -> Any:
        """The validated message; raise :class:`InvalidMessage` (or ``ValueError``)."""
        raise NotImplementedError

    def admitted(self, run: TaskRun) -> None:
        """A valid message was claimed (count it)."""

    def checkpoint(self, run: TaskRun) -> str | None:
        """The payload that resumes ``run`` after ``run.settled_cursor``; ``None`` if the
        kind cannot resume (a reclaimed message then starts from the beginning)."""
        return None

    def exhausted(self, run: TaskRun) -> bool:
        """Everything ``run`` is to store is through the pipelines (``settled_cursor``
        reached its end), even if a request of it is still outstanding: at shutdown the
        run is acked rather than given back from an older checkpoint."""
        return False

    def progress_events(self, run: TaskRun, through: int) -> list[str]:
        """Event-stream messages for what a flush made durable: the progress of ``run``
        from ``run.reported_cursor`` up to the settled cursor ``through``."""
        return []

    def on_complete(self, run: TaskRun) -> Outcome:
        """The run has no outstanding requests and its spider is done with it."""
        return Outcome()

    def on_failure(self, run: TaskRun, failure: RunFailure) -> Outcome:
        """A request or callback of ``run`` failed; default: dead-letter the message."""
        entry = self.dead_letter(run, "task_failed", f"{failure.reason}: {failure.detail}")
        return Outcome(deadletter=[entry])

    def row_key(self, item: Any) -> str | None:
        """Stable identity of an item's row (``None``: derived from its content)."""
        return None

    def succeeded(self, stats: dict[str, Any]) -> bool:
        """Whether the worker achieved anything (else it warns and exits non-zero)."""
        return int(stats.get("item_scraped_count", 0)) > 0

    def summary_lines(self, stats: dict[str, Any]) -> list[str]:
        return []

    def progress(self, stats: dict[str, Any]) -> tuple[str, int]:
        """``(what, count)`` for progress lines, e.g. ``("IDs done", 1200)``."""
        return "items stored", int(stats.get("item_scraped_count", 0))

    @classmethod
    def replay_payload(cls, payload: str) -> str:
        """A dead-lettered payload prepared for another go (``scrapy deadletter replay``);
        a class method, so the command needs no crawler."""
        return payload

    # -- helpers for subclasses -------------------------------------------

    def dead_letter(
        self, run: TaskRun, reason: DeadLetterReason, error: str, payload: str | None = None
    ) -> str:
        """A dead-letter entry for ``run`` (default payload: the message as delivered)."""
        from crawlers.extensions.task_ledger import TaskLedger

        ledger = TaskLedger.of(self.crawler)
        return ledger.dead_letter_entry(
            reason,
            error,
            run.delivery.payload if payload is None else payload,
            kind=self.name,
            message_id=run.delivery.message_id,
        )

    def retry_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Back-off for the ``attempt``-th retry; ``Retry-After`` wins when given."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.retry_delay_max_seconds)
        base: float = self.config.retry_delay_seconds * float(2 ** max(attempt - 1, 0))
        return min(base, self.config.retry_delay_max_seconds)
