"""The tables of Hydra's state database (SQLAlchemy 2 declarative).

One :data:`Base.metadata` for every component that keeps state there (seed
003's fetch service now; the scheduler and the web channels later), so one
Alembic history migrates it all. The table names are seed 003's. Constraint and
index names follow :data:`NAMING_CONVENTION`, so a migration can name what it
alters on SQLite and PostgreSQL alike. Datetimes are timezone-aware UTC on every
backend (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JobStatus = Literal["running", "success", "failed", "requires_human_review"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
#: identifiers from messages (channel, job, structure ids): bounded, indexable everywhere
ID_LENGTH = 255


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out.

    PostgreSQL stores ``timestamptz``; SQLite has no zone, so the UTC wall time
    is stored and the zone is put back when read. A naive datetime is refused
    rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class FetcherDetails(Base):
    """A generated fetcher of one site structure (a domain), by version
    (``domain_fetcher_v1``, ``_v2``...)."""

    __tablename__ = "fetcher_details"
    # the unique constraint's index leads with structure_id: it serves lookups by domain
    __table_args__ = (UniqueConstraint("structure_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    fetcher_name: Mapped[str] = mapped_column(String(ID_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelFetcherDetails(Base):
    """Which fetcher a channel uses, with its configuration (never credentials:
    those come with each task)."""

    __tablename__ = "channel_fetcher_details"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    # indexed: heal-mode validation runs a new fetcher against every channel mapped to it
    fetcher_id: Mapped[int] = mapped_column(
        ForeignKey("fetcher_details.id", ondelete="RESTRICT"), index=True
    )
    config_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobRun(Base):
    """One fetch job (one task message), upserted by its id: a redelivered
    message updates the same row, keeping when its topics were published."""

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{status}'" for status in JOB_STATUSES)),
            name="status",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    channel_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    source_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    metadata_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: set once, when the job's files went to the parsers' topic / its status to the status topic
    parsers_published_at: Mapped[datetime | None]
    status_published_at: Mapped[datetime | None]


class FileMetadata(Base):
    """A file a job stored, with its SHA-256: the history that tells a new file
    from an unchanged one."""

    __tablename__ = "file_metadata"
    __table_args__ = (
        # one row per file of a job (a redelivered job records it once); its index
        # leads with job_id, so it also serves "the files of this job"
        UniqueConstraint("job_id", "file_path"),
        # "the latest hash of this path in this channel": one index range, read backwards
        Index("ix_file_metadata_channel_path_id", "channel_id", "file_path", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    channel_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    file_path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetryConfig(Base):
    """Retry limits per channel; the row whose ``channel_id`` is NULL holds the
    defaults (seeded by the first migration: 3 simple, 2 heal retries, 30 s)."""

    __tablename__ = "retry_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), unique=True)
    max_simple_retries: Mapped[int] = mapped_column(Integer)
    max_heal_retries: Mapped[int] = mapped_column(Integer)
    retry_delay_seconds: Mapped[float] = mapped_column(Float)


__all__ = [
    "JOB_STATUSES",
    "Base",
    "ChannelFetcherDetails",
    "FetcherDetails",
    "FileMetadata",
    "JobRun",
    "JobStatus",
    "RetryConfig",
    "utcnow",
]
