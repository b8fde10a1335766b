"""Seed 003's fetch service state: fetchers, channel mappings, job runs, file
hashes, retry limits (with the defaults row: 3 simple, 2 heal retries, 30 s).

Revision ID: 0001_fetch_state
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_fetch_state"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "fetcher_details",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.String(255), nullable=False),
        sa.Column("fetcher_name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fetcher_details")),
        sa.UniqueConstraint(
            "structure_id", "version", name=op.f("uq_fetcher_details_structure_id_version")
        ),
    )
    op.create_table(
        "channel_fetcher_details",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("fetcher_id", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.JSON(), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        sa.ForeignKeyConstraint(
            ["fetcher_id"],
            ["fetcher_details.id"],
            name=op.f("fk_channel_fetcher_details_fetcher_id_fetcher_details"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_fetcher_details")),
        sa.UniqueConstraint("channel_id", name=op.f("uq_channel_fetcher_details_channel_id")),
    )
    op.create_index(
        op.f("ix_channel_fetcher_details_fetcher_id"), "channel_fetcher_details", ["fetcher_id"]
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("source_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.JSON(), nullable=False),
        _when("created_at"),
        _when("updated_at"),
        _when("parsers_published_at", nullable=True),
        _when("status_published_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'success', 'failed', 'requires_human_review')",
            name=op.f("ck_job_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_job_runs_job_id")),
    )
    op.create_index(op.f("ix_job_runs_channel_id"), "job_runs", ["channel_id"])
    op.create_table(
        "file_metadata",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(255), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=False),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_metadata")),
        sa.UniqueConstraint("job_id", "file_path", name=op.f("uq_file_metadata_job_id_file_path")),
    )
    op.create_index(
        "ix_file_metadata_channel_path_id", "file_metadata", ["channel_id", "file_path", "id"]
    )
    retry_config = op.create_table(
        "retry_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.String(255), nullable=True),
        sa.Column("max_simple_retries", sa.Integer(), nullable=False),
        sa.Column("max_heal_retries", sa.Integer(), nullable=False),
        sa.Column("retry_delay_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retry_config")),
        sa.UniqueConstraint("channel_id", name=op.f("uq_retry_config_channel_id")),
    )
    op.bulk_insert(
        retry_config,
        [
            {
                "channel_id": None,
                "max_simple_retries": 3,
                "max_heal_retries": 2,
                "retry_delay_seconds": 30.0,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("retry_config")
    op.drop_index("ix_file_metadata_channel_path_id", table_name="file_metadata")
    op.drop_table("file_metadata")
    op.drop_index(op.f("ix_job_runs_channel_id"), table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_index(
        op.f("ix_channel_fetcher_details_fetcher_id"), table_name="channel_fetcher_details"
    )
    op.drop_table("channel_fetcher_details")
    op.drop_table("fetcher_details")
