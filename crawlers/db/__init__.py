"""Hydra's state database: one SQLAlchemy metadata and one Alembic history for
every component that keeps state in SQL (seed 003's fetch service first).

``StateDB`` is the fetch service's access to it; ``scrapy db upgrade|current|check``
is the operators'. Reference: ``docs/commands.md``.
"""

from __future__ import annotations

from crawlers.db import scheduler_models  # the scheduler's tables join Base.metadata
from crawlers.db.models import JOB_STATUSES, Base, JobStatus
from crawlers.db.state import (
    DEFAULT_RETRY_POLICY,
    FileRecord,
    JobRecord,
    RetryPolicy,
    StateDB,
    StateDBError,
    Topic,
    alembic_config,
    head_revision,
)

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "JOB_STATUSES",
    "Base",
    "FileRecord",
    "JobRecord",
    "JobStatus",
    "RetryPolicy",
    "StateDB",
    "StateDBError",
    "Topic",
    "alembic_config",
    "head_revision",
    "scheduler_models",
]
