"""The scheduler's tables (seed 001's Configuration and State Managers) in the
state database, on the same :class:`~crawlers.db.models.Base` so one Alembic
history migrates them with the rest (``0002_scheduler``).

Task configs keep only their public part in clear; secrets are a Fernet token
(``crawlers.services.scheduler.secrets``). Every config change and every job
transition is a row of its own, so "who changed what" and "what happened to
this job" are answered from history, not from the latest state. The unique
``(task_name, fire_at)`` of ``trigger_fires`` is what lets several scheduler
replicas race for a fire and exactly one win it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from crawlers.db.models import ID_LENGTH, Base, utcnow

JobState = Literal["pending", "queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
#: states a job never leaves
FINAL_JOB_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
ConfigChange = Literal["created", "updated", "deleted"]
CONFIG_CHANGES: tuple[str, ...] = get_args(ConfigChange)
#: longest state or change name (a column width)
STATE_LENGTH = 16


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    return CheckConstraint(
        "{} IN ({})".format(column, ", ".join(f"'{value}'" for value in values)), name=name
    )


class TaskConfigRow(Base):
    """A task config as it is now: its public JSON, its sealed secrets (write-only:
    never returned by the API), and a version bumped by every change."""

    __tablename__ = "task_configs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    config_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets_encrypted: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TaskConfigVersionRow(Base):
    """One change of a task config (kept after the config is deleted): what it
    became, who changed it (an API key's id or label, never the key) and when."""

    __tablename__ = "task_config_versions"
    __table_args__ = (
        # also the index of "a task's history, in order"
        UniqueConstraint("task_name", "version"),
        _one_of("change", CONFIG_CHANGES, "change"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(ID_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    paused: Mapped[bool] = mapped_column(default=False)
    changed_by: Mapped[str] = mapped_column(String(ID_LENGTH))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    change: Mapped[str] = mapped_column(String(STATE_LENGTH))


class ScheduledJobRow(Base):
    """One attempt of a fired task, from ``pending`` to a final state."""

    __tablename__ = "scheduled_jobs"
    __table_args__ = (
        _one_of("state", JOB_STATES, "state"),
        # "jobs in this state, newest first" (running counts, the heartbeat reaper)
        Index("ix_scheduled_jobs_state_id", "state", "id"),
        # "this task's jobs, newest first" (listing, consecutive failures)
        Index("ix_scheduled_jobs_task_name_id", "task_name", "id"),
        # "final jobs finished before the retention" (pruning, 0003_job_retention)
        Index("ix_scheduled_jobs_state_finished_at", "state", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    task_name: Mapped[str] = mapped_column(String(ID_LENGTH))
    attempt: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    reason: Mapped[str] = mapped_column(Text, default="")
    fired_at: Mapped[datetime]
    scheduled_for: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    #: host/pid of a local process, or a Scrapyd node and its job id
    worker: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    stats_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: where the job's log is (a path or a log store's reference), not the log itself
    log_ref: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobTransitionRow(Base):
    """A job's move from one state to another (``from_state`` is NULL for its creation)."""

    __tablename__ = "job_transitions"
    __table_args__ = (
        _one_of("to_state", JOB_STATES, "to_state"),
        Index("ix_job_transitions_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("scheduled_jobs.job_id", ondelete="CASCADE")
    )
    from_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))
    to_state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class TriggerFireRow(Base):
    """A trigger's fire, claimed by the replica that inserted it first."""

    __tablename__ = "trigger_fires"
    __table_args__ = (
        # two replicas never fire the same trigger twice: the second insert conflicts
        UniqueConstraint("task_name", "fire_at"),
        # pruning old fires by time
        Index("ix_trigger_fires_fire_at", "fire_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(ID_LENGTH))
    fire_at: Mapped[datetime]
    fired_by: Mapped[str] = mapped_column(String(ID_LENGTH))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = [
    "CONFIG_CHANGES",
    "FINAL_JOB_STATES",
    "JOB_STATES",
    "ConfigChange",
    "JobState",
    "JobTransitionRow",
    "ScheduledJobRow",
    "TaskConfigRow",
    "TaskConfigVersionRow",
    "TriggerFireRow",
]
