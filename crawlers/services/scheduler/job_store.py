"""The jobs half of the scheduler's store: jobs, their state changes and history.

Every call is one short transaction in a thread, as in :mod:`.store`:
:meth:`JobStore.transition` moves a job only along :data:`ALLOWED_TRANSITIONS`,
as a compare-and-set on its current state, and records the move in the same
transaction, so two writers never both move a job out of the same state. The
queries behind the job list, the heartbeat reaper and retention are module
functions so their plans can be checked (EXPLAIN) where they are used.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack, cast

from sqlalchemy import Row, Select, case, delete, func, literal, select, update

from crawlers.db.models import ID_LENGTH, Base, utcnow
from crawlers.db.scheduler_models import (
    FINAL_JOB_STATES,
    JOB_STATES,
    JobState,
)
from crawlers.db.state import StateDB

JOBS = Base.metadata.tables["scheduled_jobs"]
TRANSITIONS = Base.metadata.tables["job_transitions"]

#: where a job may go from each state; ``failed`` from any non-final state is the
#: heartbeat reaper's (a worker that died), and a final state never changes
ALLOWED_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"queued", "cancelled", "failed"}),
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "timed_out"}),
    **{state: frozenset() for state in FINAL_JOB_STATES},
}
#: outcomes that count towards "N consecutive failures" (cancelled ones are skipped)
FAILURE_STATES = ("failed", "timed_out")
RUNNING: tuple[JobState, ...] = ("running",)
#: the largest page :meth:`SchedulerStore.jobs` returns
MAX_PAGE = 1000


class JobFields(TypedDict, total=False):
    """Columns a transition may set besides the state (``stats_json`` replaces the stats)."""

    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    stats_json: dict[str, Any]
    log_ref: str | None


_DATETIME_FIELDS = ("started_at", "finished_at", "heartbeat_at")


@dataclass(frozen=True)
class SchedulerJob:
    """A snapshot of a ``scheduled_jobs`` row; ``id`` is the pagination cursor."""

    id: int
    job_id: str
    task_name: str
    attempt: int
    priority: int
    state: JobState
    reason: str
    fired_at: datetime
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    stats: dict[str, Any]
    log_ref: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def final(self) -> bool:
        return self.state in FINAL_JOB_STATES


@dataclass(frozen=True)
class JobTransition:
    """One move of a job (``from_state`` is None for its creation)."""

    job_id: str
    from_state: JobState | None
    to_state: JobState
    at: datetime
    reason: str


class JobStore:
    """Jobs and their history; :class:`~.store.SchedulerStore` adds task configs and fires."""

    def __init__(self, db: StateDB) -> None:
        #: called after each job creation or state change stored here (the console's feed)
        self.listeners: list[Callable[[], None]] = []
        self.db = db

    # -- jobs ------------------------------------------------------------------

    async def create_job(
        self,
        job_id: str,
        task_name: str,
        attempt: int,
        priority: int,
        fired_at: datetime,
        scheduled_for: datetime,
    ) -> None:
        """A new job, ``pending``; ``ValueError`` if ``job_id`` exists already."""
        _check_id(job_id, "job_id")
        _check_id(task_name, "task_name")
        if attempt < 0:
            raise ValueError("attempt must be 0 or more")
        values = {
            "job_id": job_id,
            "task_name": task_name,
            "attempt": attempt,
            "priority": priority,
            "fired_at": _utc(fired_at, "fired_at"),
            "scheduled_for": _utc(scheduled_for, "scheduled_for"),
        }
        await asyncio.to_thread(self._create_job, values)
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    def _create_job(self, values: dict[str, Any]) -> None:
        now = utcnow()
        insert = self.db.insert(JOBS).values(
            state="pending", reason="", stats_json={}, created_at=now, updated_at=now, **values
        )
        with self.db.transaction(write=True) as connection:
            created = connection.execute(
                insert.on_conflict_do_nothing(index_elements=["job_id"]).returning(JOBS.c.id)
            )
            if created.first() is None:
                raise ValueError(f"job {values['job_id']!r} exists already")
            connection.execute(
                TRANSITIONS.insert().values(
                    job_id=values["job_id"], from_state=None, to_state="pending", at=now,
                    reason="created",
                )
            )  # fmt: skip

    async def transition(
        self,
        job_id: str,
        to_state: JobState,
        reason: str = "",
        *,
        at: datetime | None = None,
        **fields: Unpack[JobFields],
    ) -> bool:
        """Move the job to ``to_state`` if :data:`ALLOWED_TRANSITIONS` allows it from
        its current state, setting ``fields`` and recording the move; False if
        refused (a final state, a skipped step, or another writer moved it first).

        ``running`` sets ``started_at`` and ``heartbeat_at``, a final state sets
        ``finished_at`` (to ``at``, default now) unless given. ``LookupError`` for an
        unknown job.
        """
        if to_state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, not {to_state!r}")
        unknown = set(fields) - JobFields.__optional_keys__
        if unknown:
            raise TypeError(f"transition() got unknown fields: {', '.join(sorted(unknown))}")
        when = _utc(at, "at") if at is not None else utcnow()
        values: dict[str, Any] = dict(fields)
        for name in _DATETIME_FIELDS:
            if values.get(name) is not None:
                values[name] = _utc(values[name], name)
        if to_state == "running":
            values.setdefault("started_at", when)
            values.setdefault("heartbeat_at", values["started_at"])
        elif to_state in FINAL_JOB_STATES:
            values.setdefault("finished_at", when)
        if "stats_json" in values:
            values["stats_json"] = _json_object(values["stats_json"])
        moved = await asyncio.to_thread(self._transition, job_id, to_state, reason, when, values)
        if moved:
            self._notify()
        return moved

    def _transition(
        self, job_id: str, to_state: str, reason: str, at: datetime, values: dict[str, Any]
    ) -> bool:
        with self.db.transaction(write=True) as connection:
            current = connection.execute(
                select(JOBS.c.state).where(JOBS.c.job_id == job_id)
            ).scalar()
            if current is None:
                raise LookupError(f"no job {job_id!r}")
            if to_state not in ALLOWED_TRANSITIONS[current]:
                return False
            moved = connection.execute(
                update(JOBS)
                .where(JOBS.c.job_id == job_id, JOBS.c.state == current)  # compare-and-set
                .values(state=to_state, reason=reason, updated_at=utcnow(), **values)
            )
            if moved.rowcount != 1:
                return False
            connection.execute(
                TRANSITIONS.insert().values(
                    job_id=job_id, from_state=current, to_state=to_state, at=at, reason=reason
                )
            )
        return True

    async def annotate(self, job_id: str, **fields: Unpack[JobFields]) -> bool:
        """Set columns of a job without moving it (where a started job runs); False if
        the job does not exist."""
        values: dict[str, Any] = dict(fields)
        for name in _DATETIME_FIELDS:
            if values.get(name) is not None:
                values[name] = _utc(values[name], name)
        return await asyncio.to_thread(self._annotate, job_id, values)

    def _annotate(self, job_id: str, values: dict[str, Any]) -> bool:
        statement = (
            update(JOBS).where(JOBS.c.job_id == job_id).values(updated_at=utcnow(), **values)
        )
        with self.db.transaction(write=True) as connection:
            return connection.execute(statement).rowcount == 1

    async def heartbeat(
        self, job_id: str, at: datetime, *, stats: Mapping[str, Any] | None = None
    ) -> bool:
        """A running job's worker is alive at ``at`` (and, if given, its progress so
        far); False if the job is not running (any more): the worker should stop.
        A late heartbeat never moves ``heartbeat_at`` back."""
        at = _utc(at, "at")
        progress = _json_object(stats) if stats is not None else None
        return await asyncio.to_thread(self._heartbeat, job_id, at, progress)

    def _heartbeat(self, job_id: str, at: datetime, stats: dict[str, Any] | None) -> bool:
        beat = literal(at, JOBS.c.heartbeat_at.type)
        values: dict[str, Any] = {
            "heartbeat_at": case(
                (JOBS.c.heartbeat_at.is_(None) | (JOBS.c.heartbeat_at < beat), beat),
                else_=JOBS.c.heartbeat_at,
            ),
            "updated_at": utcnow(),
        }
        if stats is not None:
            values["stats_json"] = stats
        statement = (
            update(JOBS).where(JOBS.c.job_id == job_id, JOBS.c.state == "running").values(values)
        )
        with self.db.transaction(write=True) as connection:
            return connection.execute(statement).rowcount == 1

    async def heartbeats(self, job_ids: Collection[str], at: datetime) -> None:
        """:meth:`heartbeat` (without stats) for many running jobs in one transaction."""
        if job_ids:
            await asyncio.to_thread(self._heartbeats, list(job_ids), _utc(at, "at"))

    def _heartbeats(self, job_ids: list[str], at: datetime) -> None:
        beat = literal(at, JOBS.c.heartbeat_at.type)
        newer = JOBS.c.heartbeat_at.is_(None) | (JOBS.c.heartbeat_at < beat)
        with self.db.transaction(write=True) as connection:
            for start in range(0, len(job_ids), 500):
                connection.execute(
                    update(JOBS)
                    .where(
                        JOBS.c.job_id.in_(job_ids[start : start + 500]),
                        JOBS.c.state == "running",
                        newer,
                    )
                    .values(heartbeat_at=beat, updated_at=utcnow())
                )

    async def stale_running(self, older_than: datetime) -> list[str]:
        """Running jobs whose last sign of life (heartbeat, else start) is older than
        ``older_than``: the heartbeat-timeout reaper's candidates, oldest job first."""
        return await asyncio.to_thread(self._stale_running, _utc(older_than, "older_than"))

    def _stale_running(self, older_than: datetime) -> list[str]:
        query = stale_running_query(older_than)
        with self.db.transaction(write=False) as connection:
            return [str(job_id) for job_id in connection.execute(query).scalars()]

    async def prune_jobs(self, finished_before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` final jobs (succeeded, failed, cancelled,
        timed_out) that finished before ``finished_before``, with their
        transitions; the number of jobs removed. Pending, queued and running
        jobs are never touched, however old. One short transaction: call again
        while it returns ``limit``."""
        if limit < 1:
            raise ValueError("limit must be 1 or more")
        return await asyncio.to_thread(
            self._prune_jobs, _utc(finished_before, "finished_before"), limit
        )

    def _prune_jobs(self, finished_before: datetime, limit: int) -> int:
        expired = expired_jobs_query(finished_before, limit)
        with self.db.transaction(write=True) as connection:
            job_ids = list(connection.execute(expired).scalars())
            if not job_ids:
                return 0
            # explicit, not left to ON DELETE CASCADE (SQLite enforces it only with a pragma)
            connection.execute(delete(TRANSITIONS).where(TRANSITIONS.c.job_id.in_(job_ids)))
            removed = connection.execute(
                delete(JOBS).where(
                    JOBS.c.job_id.in_(job_ids), JOBS.c.state.in_(sorted(FINAL_JOB_STATES))
                )
            )
            return int(removed.rowcount)

    async def jobs(
        self,
        task_name: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        before_id: int | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[SchedulerJob]:
        """A page of jobs, newest first; the next page is ``before_id=page[-1].id``;
        ``since``/``until`` bound when they were fired."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        query = jobs_query(task_name, state, limit, before_id)
        fired = JOBS.c.fired_at
        if since is not None:
            query = query.where(fired >= literal(_utc(since, "since"), fired.type))
        if until is not None:
            query = query.where(fired < literal(_utc(until, "until"), fired.type))
        return await asyncio.to_thread(self._jobs, query)

    def _jobs(self, query: Select[Any]) -> list[SchedulerJob]:
        with self.db.transaction(write=False) as connection:
            return [_job(row) for row in connection.execute(query)]

    async def job(self, job_id: str) -> SchedulerJob | None:
        return await asyncio.to_thread(self._job, job_id)

    def _job(self, job_id: str) -> SchedulerJob | None:
        with self.db.transaction(write=False) as connection:
            row = connection.execute(select(JOBS).where(JOBS.c.job_id == job_id)).first()
        return _job(row) if row is not None else None

    async def history(self, job_id: str) -> list[JobTransition]:
        """The job's transitions, oldest first (its creation included)."""
        return await asyncio.to_thread(self._history, job_id)

    def _history(self, job_id: str) -> list[JobTransition]:
        query = select(TRANSITIONS).where(TRANSITIONS.c.job_id == job_id).order_by(TRANSITIONS.c.id)
        with self.db.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [
            JobTransition(
                job_id=row.job_id,
                from_state=cast(JobState | None, row.from_state),
                to_state=cast(JobState, row.to_state),
                at=row.at,
                reason=row.reason,
            )
            for row in rows
        ]

    async def running_count(
        self, task_name: str | None = None, *, states: Collection[JobState] = RUNNING
    ) -> int:
        """How many jobs (of a task, or all) are running, or in any of ``states``
        (a concurrency limit may count ``queued`` ones too)."""
        unknown = set(states) - set(JOB_STATES)
        if unknown or not states:
            raise ValueError(f"states must be some of {', '.join(JOB_STATES)}")
        return await asyncio.to_thread(self._running_count, task_name, tuple(states))

    def _running_count(self, task_name: str | None, states: tuple[str, ...]) -> int:
        query = select(func.count()).select_from(JOBS).where(JOBS.c.state.in_(states))
        if task_name is not None:
            query = query.where(JOBS.c.task_name == task_name)
        with self.db.transaction(write=False) as connection:
            return int(connection.execute(query).scalar_one())

    async def consecutive_failures(self, task_name: str) -> int:
        """How many of the task's jobs failed or timed out since its last success
        (each attempt counts; cancelled jobs neither count nor break the run)."""
        return await asyncio.to_thread(self._consecutive_failures, task_name)

    def _consecutive_failures(self, task_name: str) -> int:
        last_success = (
            select(func.coalesce(func.max(JOBS.c.id), 0))
            .where(JOBS.c.task_name == task_name, JOBS.c.state == "succeeded")
            .scalar_subquery()
        )
        query = (
            select(func.count())
            .select_from(JOBS)
            .where(
                JOBS.c.task_name == task_name,
                JOBS.c.state.in_(FAILURE_STATES),
                JOBS.c.id > last_success,
            )
        )
        with self.db.transaction(write=False) as connection:
            return int(connection.execute(query).scalar_one())


def jobs_query(
    task_name: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> Select[Any]:
    """The query behind :meth:`SchedulerStore.jobs` (and ``GET /jobs``): newest first,
    served by the primary key, ``ix_scheduled_jobs_task_name_id`` or ``_state_id``."""
    query = select(JOBS).order_by(JOBS.c.id.desc()).limit(limit)
    if task_name is not None:
        query = query.where(JOBS.c.task_name == task_name)
    if state is not None:
        query = query.where(JOBS.c.state == state)
    if before_id is not None:
        query = query.where(JOBS.c.id < before_id)
    return query


def stale_running_query(older_than: datetime) -> Select[Any]:
    """The heartbeat reaper's query (``ix_scheduled_jobs_state_id``)."""
    alive = func.coalesce(JOBS.c.heartbeat_at, JOBS.c.started_at, JOBS.c.updated_at)
    return (
        select(JOBS.c.job_id)
        .where(JOBS.c.state == "running", alive < literal(older_than, JOBS.c.updated_at.type))
        .order_by(JOBS.c.id)
    )


def expired_jobs_query(finished_before: datetime, limit: int) -> Select[Any]:
    """Final jobs that finished before ``finished_before``, in no particular order
    (``ix_scheduled_jobs_state_finished_at``: a range in each final state)."""
    return (
        select(JOBS.c.job_id)
        .where(
            JOBS.c.finished_at < literal(finished_before, JOBS.c.finished_at.type),
            JOBS.c.state.in_(sorted(FINAL_JOB_STATES)),
        )
        .limit(limit)
    )


def _check_id(value: str, what: str) -> None:
    if not value or len(value) > ID_LENGTH:
        raise ValueError(f"{what} must be 1 to {ID_LENGTH} characters")


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what} is a naive datetime: give a timezone-aware one")
    return value.astimezone(UTC)


def _json_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping as JSON will give it back (so a stored copy compares equal), or
    ``ValueError`` for what JSON cannot hold."""
    try:
        loaded = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a JSON object: {exc}") from None
    return cast(dict[str, Any], loaded)


def _job(row: Row[Any]) -> SchedulerJob:
    return SchedulerJob(
        id=row.id,
        job_id=row.job_id,
        task_name=row.task_name,
        attempt=row.attempt,
        priority=row.priority,
        state=cast(JobState, row.state),
        reason=row.reason,
        fired_at=row.fired_at,
        scheduled_for=row.scheduled_for,
        started_at=row.started_at,
        finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at,
        worker=row.worker,
        stats=dict(row.stats_json or {}),
        log_ref=row.log_ref,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
