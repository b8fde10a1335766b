"""Job history retention: an index on ``scheduled_jobs (state, finished_at)``, so pruning
final jobs older than ``HYDRA_SCHEDULER_JOB_RETENTION_DAYS`` reads only the
expired ones (and finds none at once when nothing has expired).

Revision ID: 0003_job_retention
Revises: 0002_scheduler
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_job_retention"
down_revision: str | Sequence[str] | None = "0002_scheduler"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_scheduled_jobs_state_finished_at", "scheduled_jobs", ["state", "finished_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_scheduled_jobs_state_finished_at", table_name="scheduled_jobs")
