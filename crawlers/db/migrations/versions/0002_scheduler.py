"""Seed 001's scheduler: task configs and their versions, scheduled jobs and their
transitions, and the trigger fires whose unique (task, time) lets exactly one
replica fire each trigger.

Revision ID: 0002_scheduler
Revises: 0001_fetch_state
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_scheduler"
down_revision: str | Sequence[str] | None = "0001_fetch_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATES = "'pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out'"


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "task_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("config_json", sa.JSON(), nullable=False),
        sa.Column("secrets_encrypted", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_configs")),
        sa.UniqueConstraint("name", name=op.f("uq_task_configs_name")),
    )
    op.create_table(
        "task_config_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.JSON(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_by", sa.String(255), nullable=False),
        _when("changed_at"),
        sa.Column("change", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "change IN ('created', 'updated', 'deleted')",
            name=op.f("ck_task_config_versions_change"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_config_versions")),
        sa.UniqueConstraint(
            "task_name", "version", name=op.f("uq_task_config_versions_task_name_version")
        ),
    )
    op.create_table(
        "scheduled_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _when("fired_at"),
        _when("scheduled_for"),
        _when("started_at", nullable=True),
        _when("finished_at", nullable=True),
        _when("heartbeat_at", nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("stats_json", sa.JSON(), nullable=False),
        sa.Column("log_ref", sa.Text(), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.CheckConstraint(f"state IN ({JOB_STATES})", name=op.f("ck_scheduled_jobs_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_scheduled_jobs_job_id")),
    )
    op.create_index("ix_scheduled_jobs_state_id", "scheduled_jobs", ["state", "id"])
    op.create_index("ix_scheduled_jobs_task_name_id", "scheduled_jobs", ["task_name", "id"])
    op.create_table(
        "job_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        _when("at"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint(f"to_state IN ({JOB_STATES})", name=op.f("ck_job_transitions_to_state")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["scheduled_jobs.job_id"],
            name=op.f("fk_job_transitions_job_id_scheduled_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_transitions")),
    )
    op.create_index("ix_job_transitions_job_id_id", "job_transitions", ["job_id", "id"])
    op.create_table(
        "trigger_fires",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        _when("fire_at"),
        sa.Column("fired_by", sa.String(255), nullable=False),
        _when("claimed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_fires")),
        sa.UniqueConstraint(
            "task_name", "fire_at", name=op.f("uq_trigger_fires_task_name_fire_at")
        ),
    )
    op.create_index("ix_trigger_fires_fire_at", "trigger_fires", ["fire_at"])


def downgrade() -> None:
    op.drop_index("ix_trigger_fires_fire_at", table_name="trigger_fires")
    op.drop_table("trigger_fires")
    op.drop_index("ix_job_transitions_job_id_id", table_name="job_transitions")
    op.drop_table("job_transitions")
    op.drop_index("ix_scheduled_jobs_task_name_id", table_name="scheduled_jobs")
    op.drop_index("ix_scheduled_jobs_state_id", table_name="scheduled_jobs")
    op.drop_table("scheduled_jobs")
    op.drop_table("task_config_versions")
    op.drop_table("task_configs")
