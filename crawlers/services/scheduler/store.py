"""``SchedulerStore``: the scheduler's persistent state (seed 001's Configuration
and State Managers) in the state database.

Every call is one short transaction in a thread (as :mod:`crawlers.fetchers.catalog`),
so several scheduler replicas can share one database:

- a config change bumps the task's version and appends a history row in the same
  transaction, serialised per task (PostgreSQL: an advisory lock; SQLite: the
  write lock), so two replicas loading the same tasks file make one version, and
  an unchanged config makes none;
- :meth:`SchedulerStore.claim_fire` is an insert that the unique
  ``(task_name, fire_at)`` lets succeed once, whoever races for it;
- jobs and their history are :class:`~.job_store.JobStore`'s (this class adds configs
  and fires to it): a job moves only along :data:`ALLOWED_TRANSITIONS`, as a
  compare-and-set on its current state, recorded in the same transaction.

Datetimes must be timezone-aware (UTC is stored). Secrets arrive here already
sealed (:mod:`crawlers.services.scheduler.secrets`); this module never sees them in clear.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, delete, func, literal, select, text, update
from sqlalchemy.engine import Connection

from crawlers.db.models import Base, utcnow
from crawlers.db.scheduler_models import ConfigChange
from crawlers.services.scheduler.job_store import (
    ALLOWED_TRANSITIONS,
    FAILURE_STATES,
    JOBS,
    MAX_PAGE,
    RUNNING,
    TRANSITIONS,
    JobFields,
    JobStore,
    JobTransition,
    SchedulerJob,
    _check_id,
    _json_object,
    _utc,
    expired_jobs_query,
    jobs_query,
    stale_running_query,
)

CONFIGS = Base.metadata.tables["task_configs"]
VERSIONS = Base.metadata.tables["task_config_versions"]
FIRES = Base.metadata.tables["trigger_fires"]
#: the namespace of the PostgreSQL advisory locks that serialise one task's config changes
_CONFIG_LOCK = "hydra:scheduler:config:"


@dataclass(frozen=True)
class StoredTaskConfig:
    """A task config as stored: its public part, and its secrets still sealed."""

    name: str
    config: dict[str, Any]
    secrets_encrypted: str | None = field(repr=False)
    version: int
    paused: bool
    created_at: datetime
    updated_at: datetime

    @property
    def has_secrets(self) -> bool:
        return self.secrets_encrypted is not None


@dataclass(frozen=True)
class TaskConfigChange:
    """One row of a task's config history (secrets are never kept in history)."""

    task_name: str
    version: int
    change: ConfigChange
    config: dict[str, Any]
    paused: bool
    changed_by: str
    changed_at: datetime


class SchedulerStore(JobStore):
    """Task configs (versioned) and trigger fires, plus everything :class:`JobStore` does."""

    # -- task configs ----------------------------------------------------------

    async def put_config(
        self,
        name: str,
        public_json: Mapping[str, Any],
        secrets_encrypted: str | None,
        changed_by: str,
        *,
        keep_secrets: bool = False,
    ) -> int:
        """Create or replace a task config; its version after the call.

        ``secrets_encrypted`` replaces the stored secrets (None removes them), unless
        ``keep_secrets`` and it is None. A config equal to the stored one (same public
        JSON, same sealed secrets) is no change: no new version, no history row. A
        Fernet token differs each time it is made, so a caller whose secrets did not
        change (it compared the unsealed values) passes None and ``keep_secrets``.
        """
        _check_id(name, "name")
        _check_id(changed_by, "changed_by")
        config = _json_object(public_json)
        return await asyncio.to_thread(
            self._put_config, name, config, secrets_encrypted, changed_by, keep_secrets
        )

    def _put_config(
        self,
        name: str,
        config: dict[str, Any],
        secrets: str | None,
        changed_by: str,
        keep_secrets: bool,
    ) -> int:
        now = utcnow()
        with self.db.transaction(write=True) as connection:
            self._lock_config(connection, name)
            row = connection.execute(
                select(
                    CONFIGS.c.config_json,
                    CONFIGS.c.secrets_encrypted,
                    CONFIGS.c.paused,
                    CONFIGS.c.version,
                )
                .where(CONFIGS.c.name == name)
                .with_for_update()
            ).first()
            if row is not None:
                if keep_secrets and secrets is None:
                    secrets = row.secrets_encrypted
                if row.config_json == config and row.secrets_encrypted == secrets:
                    return int(row.version)
            version = self._next_version(connection, name)
            change: ConfigChange
            if row is None:
                change, paused = "created", False
                connection.execute(
                    CONFIGS.insert().values(
                        name=name, config_json=config, secrets_encrypted=secrets,
                        version=version, paused=False, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
            else:
                change, paused = "updated", bool(row.paused)
                connection.execute(
                    update(CONFIGS)
                    .where(CONFIGS.c.name == name)
                    .values(
                        config_json=config, secrets_encrypted=secrets, version=version,
                        updated_at=now,
                    )
                )  # fmt: skip
            self._record_change(connection, name, version, change, config, paused, changed_by, now)
        return version

    async def delete_config(self, name: str, changed_by: str) -> bool:
        """Delete a task config (its history stays); False when there is none."""
        _check_id(changed_by, "changed_by")
        return await asyncio.to_thread(self._delete_config, name, changed_by)

    def _delete_config(self, name: str, changed_by: str) -> bool:
        now = utcnow()
        with self.db.transaction(write=True) as connection:
            self._lock_config(connection, name)
            row = connection.execute(
                select(CONFIGS.c.config_json, CONFIGS.c.paused)
                .where(CONFIGS.c.name == name)
                .with_for_update()
            ).first()
            if row is None:
                return False
            version = self._next_version(connection, name)
            connection.execute(delete(CONFIGS).where(CONFIGS.c.name == name))
            self._record_change(
                connection, name, version, "deleted", dict(row.config_json or {}),
                bool(row.paused), changed_by, now,
            )  # fmt: skip
        return True

    async def set_paused(self, name: str, paused: bool, changed_by: str) -> int:
        """Pause or resume a task; its version after the call (unchanged if it already
        was). ``LookupError`` for an unknown task."""
        _check_id(changed_by, "changed_by")
        return await asyncio.to_thread(self._set_paused, name, paused, changed_by)

    def _set_paused(self, name: str, paused: bool, changed_by: str) -> int:
        now = utcnow()
        with self.db.transaction(write=True) as connection:
            self._lock_config(connection, name)
            row = connection.execute(
                select(CONFIGS.c.config_json, CONFIGS.c.paused, CONFIGS.c.version)
                .where(CONFIGS.c.name == name)
                .with_for_update()
            ).first()
            if row is None:
                raise LookupError(f"no task config {name!r}")
            if bool(row.paused) == paused:
                return int(row.version)
            version = self._next_version(connection, name)
            connection.execute(
                update(CONFIGS)
                .where(CONFIGS.c.name == name)
                .values(paused=paused, version=version, updated_at=now)
            )
            self._record_change(
                connection, name, version, "updated", dict(row.config_json or {}), paused,
                changed_by, now,
            )  # fmt: skip
        return version

    async def get_config(self, name: str) -> StoredTaskConfig | None:
        return await asyncio.to_thread(self._get_config, name)

    def _get_config(self, name: str) -> StoredTaskConfig | None:
        with self.db.transaction(write=False) as connection:
            row = connection.execute(select(CONFIGS).where(CONFIGS.c.name == name)).first()
        return _config(row) if row is not None else None

    async def list_configs(self) -> list[StoredTaskConfig]:
        """Every task config, by name."""
        return await asyncio.to_thread(self._list_configs)

    def _list_configs(self) -> list[StoredTaskConfig]:
        with self.db.transaction(write=False) as connection:
            rows = connection.execute(select(CONFIGS).order_by(CONFIGS.c.name)).all()
        return [_config(row) for row in rows]

    async def config_history(self, name: str) -> list[TaskConfigChange]:
        """Every change of the task, oldest first (also after it was deleted)."""
        return await asyncio.to_thread(self._config_history, name)

    def _config_history(self, name: str) -> list[TaskConfigChange]:
        query = select(VERSIONS).where(VERSIONS.c.task_name == name).order_by(VERSIONS.c.version)
        with self.db.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [
            TaskConfigChange(
                task_name=row.task_name,
                version=row.version,
                change=cast(ConfigChange, row.change),
                config=dict(row.config_json or {}),
                paused=bool(row.paused),
                changed_by=row.changed_by,
                changed_at=row.changed_at,
            )
            for row in rows
        ]

    def _lock_config(self, connection: Connection, name: str) -> None:
        """Serialise one task's changes (SQLite's write transaction already does)."""
        if self.db.backend == "postgresql":
            key = zlib.crc32((_CONFIG_LOCK + name).encode("utf-8"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @staticmethod
    def _next_version(connection: Connection, name: str) -> int:
        """One more than the task's last version, so a re-created task goes on counting."""
        query = select(func.coalesce(func.max(VERSIONS.c.version), 0)).where(
            VERSIONS.c.task_name == name
        )
        return int(connection.execute(query).scalar_one()) + 1

    @staticmethod
    def _record_change(
        connection: Connection,
        name: str,
        version: int,
        change: ConfigChange,
        config: dict[str, Any],
        paused: bool,
        changed_by: str,
        at: datetime,
    ) -> None:
        connection.execute(
            VERSIONS.insert().values(
                task_name=name, version=version, change=change, config_json=config,
                paused=paused, changed_by=changed_by, changed_at=at,
            )
        )  # fmt: skip

    # -- trigger fires ---------------------------------------------------------

    async def claim_fire(self, task_name: str, fire_at: datetime, fired_by: str) -> bool:
        """Claim the fire of ``task_name`` due at ``fire_at``: True for exactly one
        claimer, whichever replica it is. Replicas must compute the same ``fire_at``
        for the same fire (the schedule's time, not the clock's)."""
        _check_id(task_name, "task_name")
        _check_id(fired_by, "fired_by")
        return await asyncio.to_thread(
            self._claim_fire, task_name, _utc(fire_at, "fire_at"), fired_by
        )

    def _claim_fire(self, task_name: str, fire_at: datetime, fired_by: str) -> bool:
        insert = self.db.insert(FIRES).values(
            task_name=task_name, fire_at=fire_at, fired_by=fired_by, claimed_at=utcnow()
        )
        # RETURNING, not rowcount: psycopg reports -1 for an insert that returns the id
        statement = insert.on_conflict_do_nothing(
            index_elements=[FIRES.c.task_name, FIRES.c.fire_at]
        ).returning(FIRES.c.id)
        with self.db.transaction(write=True) as connection:
            return connection.execute(statement).first() is not None

    async def last_fire(self, task_name: str) -> datetime | None:
        """When the task last fired (by any replica): where missed fires start."""
        return await asyncio.to_thread(self._last_fire, task_name)

    def _last_fire(self, task_name: str) -> datetime | None:
        query = select(func.max(FIRES.c.fire_at)).where(FIRES.c.task_name == task_name)
        with self.db.transaction(write=False) as connection:
            found: datetime | None = connection.execute(query).scalar()
        return found

    async def fire_job(
        self, task_name: str, fire_at: datetime, fired_by: str, job_id: str, priority: int
    ) -> bool:
        """:meth:`claim_fire`, and if this caller won, its job created already ``queued``
        (history: created, then fired), all in one transaction: a fire costs one commit,
        and a crash cannot leave a claimed fire without its job."""
        _check_id(task_name, "task_name")
        _check_id(fired_by, "fired_by")
        _check_id(job_id, "job_id")
        fire_at = _utc(fire_at, "fire_at")
        return await asyncio.to_thread(
            self._fire_job, task_name, fire_at, fired_by, job_id, priority
        )

    def _fire_job(
        self, task_name: str, fire_at: datetime, fired_by: str, job_id: str, priority: int
    ) -> bool:
        now = utcnow()
        claim = (
            self.db.insert(FIRES)
            .values(task_name=task_name, fire_at=fire_at, fired_by=fired_by, claimed_at=now)
            .on_conflict_do_nothing(index_elements=[FIRES.c.task_name, FIRES.c.fire_at])
            .returning(FIRES.c.id)
        )
        with self.db.transaction(write=True) as connection:
            if connection.execute(claim).first() is None:
                return False
            connection.execute(
                JOBS.insert().values(
                    job_id=job_id, task_name=task_name, attempt=0, priority=priority,
                    fired_at=fire_at, scheduled_for=fire_at, state="queued", reason="fired",
                    stats_json={}, created_at=now, updated_at=now,
                )
            )  # fmt: skip
            connection.execute(
                TRANSITIONS.insert(),
                [
                    {"job_id": job_id, "from_state": None, "to_state": "pending", "at": now,
                     "reason": "created"},
                    {"job_id": job_id, "from_state": "pending", "to_state": "queued", "at": now,
                     "reason": "fired"},
                ],
            )  # fmt: skip
        return True

    async def last_fires(self) -> dict[str, datetime]:
        """When each task last fired: :meth:`last_fire` for every task in one query."""
        return await asyncio.to_thread(self._last_fires)

    def _last_fires(self) -> dict[str, datetime]:
        query = select(FIRES.c.task_name, func.max(FIRES.c.fire_at)).group_by(FIRES.c.task_name)
        with self.db.transaction(write=False) as connection:
            return {str(name): _utc(at, "fire_at") for name, at in connection.execute(query)}

    async def config_versions(self) -> dict[str, tuple[int, bool]]:
        """Each task config's version and paused flag: what a replica compares with its
        cache to catch a change whose notice it missed."""
        return await asyncio.to_thread(self._config_versions)

    def _config_versions(self) -> dict[str, tuple[int, bool]]:
        query = select(CONFIGS.c.name, CONFIGS.c.version, CONFIGS.c.paused)
        with self.db.transaction(write=False) as connection:
            return {str(n): (int(v), bool(p)) for n, v, p in connection.execute(query)}

    async def prune_fires(
        self, before: datetime, *, keep_last: bool = False, limit: int | None = None
    ) -> int:
        """Forget fires due before ``before`` (only recent ones can still be raced
        for); the number removed. ``keep_last`` keeps each task's latest fire
        whatever its age (:meth:`last_fires`: where its trigger's next window
        starts); ``limit`` bounds one call (the oldest go first)."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be 1 or more")
        return await asyncio.to_thread(self._prune_fires, _utc(before, "before"), keep_last, limit)

    def _prune_fires(self, before: datetime, keep_last: bool, limit: int | None) -> int:
        old = FIRES.c.fire_at < literal(before, FIRES.c.fire_at.type)
        if keep_last:
            newer = FIRES.alias("newer")
            old = old & (
                select(newer.c.id)
                .where(newer.c.task_name == FIRES.c.task_name, newer.c.fire_at > FIRES.c.fire_at)
                .exists()
            )
        if limit is not None:
            ids = select(FIRES.c.id).where(old).order_by(FIRES.c.fire_at).limit(limit)
            old = FIRES.c.id.in_(ids.scalar_subquery())
        with self.db.transaction(write=True) as connection:
            return int(connection.execute(delete(FIRES).where(old)).rowcount)


def _config(row: Row[Any]) -> StoredTaskConfig:
    return StoredTaskConfig(
        name=row.name,
        config=dict(row.config_json or {}),
        secrets_encrypted=row.secrets_encrypted,
        version=row.version,
        paused=bool(row.paused),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


__all__ = [
    "ALLOWED_TRANSITIONS",
    "CONFIGS",
    "FAILURE_STATES",
    "FIRES",
    "JOBS",
    "MAX_PAGE",
    "RUNNING",
    "TRANSITIONS",
    "VERSIONS",
    "JobFields",
    "JobStore",
    "JobTransition",
    "SchedulerJob",
    "SchedulerStore",
    "StoredTaskConfig",
    "TaskConfigChange",
    "expired_jobs_query",
    "jobs_query",
    "stale_running_query",
]
