"""Which fired jobs start now, and how long a failed one waits: pure dispatch policy.

The dispatcher holds fired jobs in memory and answers one question per round: given
what runs now and the global limit, what to start, what to drop, what to cancel. It
never launches anything, so the service can persist its answers (and a replica can
rebuild the queue from the database) before acting on them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from crawlers.models.task_config import Concurrency, RetryPolicy, TaskConfig


@dataclass(frozen=True, slots=True)
class FiredJob:
    """A fire waiting for a slot, with its task's concurrency policy as of the fire."""

    task: str
    priority: int
    fired_at: datetime
    job_id: str
    concurrency: Concurrency = "skip"
    max_parallel: int = 1

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError("max_parallel is at least 1")

    @classmethod
    def of(cls, config: TaskConfig, fired_at: datetime, job_id: str) -> FiredJob:
        return cls(
            task=config.name,
            priority=config.priority,
            fired_at=fired_at,
            job_id=job_id,
            concurrency=config.concurrency,
            max_parallel=config.max_parallel,
        )


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Start ``job`` now; with ``cancel``, first cancel that running job (``replace``)."""

    job: FiredJob
    cancel: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A fire dropped without running, and why (for the job's history)."""

    job: FiredJob
    reason: str


@dataclass(frozen=True, slots=True)
class DispatchRound:
    dispatched: list[Dispatch] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class PriorityDispatcher:
    """Fired jobs by priority (higher first), first come first served within a priority.

    Per round, in that order, each waiting job of a task that runs fewer than its
    ``max_parallel`` jobs starts if the global limit leaves a slot, else waits. When its
    task is at ``max_parallel``, the task's policy decides:

    * ``skip``: the fire is dropped (``Skipped``), the running job is enough;
    * ``queue``: it waits for the task's own slot; jobs behind it of other tasks still
      start (no head-of-line blocking);
    * ``replace``: it starts and the task's oldest running job is cancelled; it takes
      that job's slot, so it needs no free global slot. Of a replace task's waiting
      fires only the newest ``max_parallel`` are kept: older ones are superseded.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[int, int, FiredJob]] = []  # (-priority, arrival, job)
        self._ids: set[str] = set()
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def push(self, job: FiredJob) -> None:
        if job.job_id in self._ids:
            raise ValueError(f"job {job.job_id} is already waiting")
        self._arrivals += 1
        bisect.insort(self._waiting, (-job.priority, self._arrivals, job))
        self._ids.add(job.job_id)

    def remove(self, job_id: str) -> FiredJob | None:
        """Takes a waiting job out (cancelled before it started); None if it is not waiting."""
        if job_id not in self._ids:
            return None
        for index, (_, _, job) in enumerate(self._waiting):
            if job.job_id == job_id:
                del self._waiting[index]
                self._ids.discard(job_id)
                return job
        return None  # pragma: no cover - _ids and _waiting always agree

    def waiting(self) -> list[FiredJob]:
        """The waiting jobs in dispatch order."""
        return [job for _, _, job in self._waiting]

    def dispatch(self, running: Mapping[str, Sequence[str]], global_limit: int) -> DispatchRound:
        """One round. ``running`` maps a task to its running job ids, oldest first (a
        replace cancels the oldest); ``global_limit`` caps all running jobs together."""
        if global_limit < 0:
            raise ValueError("global_limit is at least 0")
        active = {task: list(ids) for task, ids in running.items()}
        free = global_limit - sum(len(ids) for ids in active.values())
        superseded = self._superseded()
        result = DispatchRound()
        keep: list[tuple[int, int, FiredJob]] = []
        for entry in self._waiting:
            job = entry[2]
            ids = active.setdefault(job.task, [])
            if job.job_id in superseded:
                result.skipped.append(Skipped(job, "superseded by a newer fire of the task"))
            elif len(ids) < job.max_parallel:
                if free > 0:
                    free -= 1
                    ids.append(job.job_id)
                    result.dispatched.append(Dispatch(job))
                else:
                    keep.append(entry)
            elif job.concurrency == "skip":
                reason = (
                    f"{len(ids)} job(s) of the task still running (max_parallel {job.max_parallel})"
                )
                result.skipped.append(Skipped(job, reason))
            elif job.concurrency == "replace" and (victim := _oldest(ids, running, job.task)):
                ids.remove(victim)
                ids.append(job.job_id)
                result.dispatched.append(Dispatch(job, cancel=victim))
            else:  # queue, or a replace whose task runs only jobs started this round
                keep.append(entry)
        self._waiting = keep
        self._ids = {job.job_id for _, _, job in keep}
        return result

    def _superseded(self) -> set[str]:
        """Waiting fires older than a task's newest ``replace`` fire, beyond its max_parallel."""
        newest_first = sorted(self._waiting, key=lambda entry: entry[1], reverse=True)
        room: dict[str, int] = {}  # task -> fires still kept after its newest replace fire
        superseded: set[str] = set()
        for _, _, job in newest_first:
            if job.task in room:
                if room[job.task] > 0:
                    room[job.task] -= 1
                else:
                    superseded.add(job.job_id)
            elif job.concurrency == "replace":
                room[job.task] = job.max_parallel - 1
        return superseded


def _oldest(ids: list[str], running: Mapping[str, Sequence[str]], task: str) -> str | None:
    """The oldest job of ``ids`` that ran before this round (never one it just started)."""
    before = running.get(task, ())
    return next((job_id for job_id in ids if job_id in before), None)


class RandomSource(Protocol):
    """``random.Random`` or anything with its ``random()``: a float in [0, 1)."""

    def random(self) -> float: ...


def retry_delay(policy: RetryPolicy, attempt: int, rng: RandomSource) -> float:
    """Seconds before retry number ``attempt`` (1 for the first retry).

    ``backoff_seconds * backoff_factor ** (attempt - 1)``, capped at
    ``max_backoff_seconds``, then shortened by up to ``jitter`` of itself at random:
    the cap stays a hard maximum, and retries of jobs that failed together (a site
    down) spread out instead of hitting it again in step, even at the cap.
    """
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    base, factor, cap = policy.backoff_seconds, policy.backoff_factor, policy.max_backoff_seconds
    if base == 0:
        return 0.0
    # compared in logarithms: factor ** (attempt - 1) overflows long before the cap matters
    if math.log(base) + (attempt - 1) * math.log(factor) >= math.log(cap):
        delay = cap
    else:
        try:
            delay = min(cap, base * factor ** (attempt - 1))
        except OverflowError:  # a tiny base times a huge power: still below the cap
            delay = min(cap, math.exp(math.log(base) + (attempt - 1) * math.log(factor)))
    return float(delay * (1.0 - policy.jitter * rng.random()))
