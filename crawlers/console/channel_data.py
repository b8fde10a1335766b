"""What the channels and reviews pages read: mappings, jobs, versions and a review's kept files.

Every function blocks (SQL, git, the file system): the pages call them through
``asyncio.to_thread``. A review's files are served only from its own folder of a
local store (``{store}/{channel_id}/{job_id}/review/``): no ``..``, no absolute path,
no symlink leading out, only HAR and PNG files, and at most :data:`MAX_FILE_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.fetchers.catalog import (
    CANDIDATES_KEY,
    CHANNELS,
    FETCHERS,
    JOBS,
    REVIEW_KEY,
    FetcherVersion,
)
from crawlers.fetchers.repository import FetcherRepository, RepositoryError
from crawlers.sources.base import safe_relative_path as _relative
from crawlers.stores.local import LocalStore

#: what a review folder may serve, and how
CONTENT_TYPES = {".har": "application/json", ".png": "image/png"}
MAX_FILE_BYTES = 64 << 20
#: the most reviews the list reads (the undecided ones among them are shown)
REVIEWS_READ = 500


@dataclass(frozen=True)
class Channel:
    channel_id: str
    fetcher: FetcherVersion
    config: dict[str, Any]
    updated_at: datetime
    last_job: str = ""
    last_status: str = ""
    last_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    channel_id: str
    status: str
    message: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def candidates(self) -> list[dict[str, Any]]:
        kept = self.metadata.get(CANDIDATES_KEY)
        return [c for c in kept if isinstance(c, dict)] if isinstance(kept, list) else []

    @property
    def decision(self) -> dict[str, Any]:
        decided = self.metadata.get(REVIEW_KEY)
        return decided if isinstance(decided, dict) else {}

    def candidate(self, attempt: int) -> dict[str, Any] | None:
        return next((c for c in self.candidates if c.get("attempt") == attempt), None)


@dataclass(frozen=True)
class Version:
    fetcher: FetcherVersion
    created_at: datetime
    commit: str = ""
    message: str = ""


_JOB_COLUMNS = (
    JOBS.c.job_id, JOBS.c.channel_id, JOBS.c.status, JOBS.c.message, JOBS.c.metadata_json,
    JOBS.c.created_at, JOBS.c.updated_at,
)  # fmt: skip


def _job(row: Any) -> Job:
    job_id, channel_id, status, message, metadata, created_at, updated_at = row
    return Job(job_id, channel_id, status, message, dict(metadata or {}), created_at, updated_at)


def _fetcher(row: Any) -> FetcherVersion:
    return FetcherVersion(int(row.id), row.structure_id, row.fetcher_name, int(row.version))


def channels(db: StateDB) -> list[Channel]:
    """Every mapped channel with its fetcher and its latest job."""
    latest = (
        select(JOBS.c.channel_id, func.max(JOBS.c.id).label("last_id"))
        .group_by(JOBS.c.channel_id)
        .subquery()
    )
    query = (
        select(
            FETCHERS,
            CHANNELS.c.channel_id,
            CHANNELS.c.config_json,
            CHANNELS.c.updated_at,
            JOBS.c.job_id.label("last_job"),
            JOBS.c.status.label("last_status"),
            JOBS.c.updated_at.label("last_at"),
        )
        .join(CHANNELS, CHANNELS.c.fetcher_id == FETCHERS.c.id)
        .outerjoin(latest, latest.c.channel_id == CHANNELS.c.channel_id)
        .outerjoin(JOBS, JOBS.c.id == latest.c.last_id)
        .order_by(CHANNELS.c.channel_id)
    )
    with db.transaction(write=False) as connection:
        rows = connection.execute(query).all()
    return [
        Channel(
            r.channel_id,
            _fetcher(r),
            dict(r.config_json or {}),
            r.updated_at,
            r.last_job or "",
            r.last_status or "",
            r.last_at,
        )
        for r in rows
    ]


def channel(db: StateDB, channel_id: str) -> Channel | None:
    return next((c for c in channels_of(db, channel_id)), None)


def channels_of(db: StateDB, channel_id: str) -> list[Channel]:
    query = (
        select(FETCHERS, CHANNELS.c.channel_id, CHANNELS.c.config_json, CHANNELS.c.updated_at)
        .join(CHANNELS, CHANNELS.c.fetcher_id == FETCHERS.c.id)
        .where(CHANNELS.c.channel_id == channel_id)
    )
    with db.transaction(write=False) as connection:
        rows = connection.execute(query).all()
    return [
        Channel(r.channel_id, _fetcher(r), dict(r.config_json or {}), r.updated_at) for r in rows
    ]


def jobs_of(db: StateDB, channel_id: str, limit: int) -> list[Job]:
    """The channel's latest jobs, newest first."""
    query = (
        select(*_JOB_COLUMNS)
        .where(JOBS.c.channel_id == channel_id)
        .order_by(JOBS.c.id.desc())
        .limit(limit)
    )
    with db.transaction(write=False) as connection:
        return [_job(row) for row in connection.execute(query)]


def job(db: StateDB, job_id: str) -> Job | None:
    with db.transaction(write=False) as connection:
        row = connection.execute(select(*_JOB_COLUMNS).where(JOBS.c.job_id == job_id)).first()
    return _job(row) if row is not None else None


def open_reviews(db: StateDB) -> list[Job]:
    """Jobs waiting for a person (``requires_human_review``, no decision yet), newest first."""
    query = (
        select(*_JOB_COLUMNS)
        .where(JOBS.c.status == "requires_human_review")
        .order_by(JOBS.c.updated_at.desc(), JOBS.c.id.desc())
        .limit(REVIEWS_READ)
    )
    with db.transaction(write=False) as connection:
        found = [_job(row) for row in connection.execute(query)]
    return [review for review in found if not review.decision]


def versions(db: StateDB, config: HydraConfig, structure_id: str) -> list[Version]:
    """The site's fetcher versions, newest first, each with the commit that made it (its
    message says why: a new channel, or the heal of the version before and its cause)."""
    query = (
        select(FETCHERS)
        .where(FETCHERS.c.structure_id == structure_id)
        .order_by(FETCHERS.c.version.desc())
    )
    with db.transaction(write=False) as connection:
        rows = connection.execute(query).all()
    repo = FetcherRepository.from_config(config)
    readable = (repo.path / ".git").exists()  # never created nor cloned just to be read
    found = []
    for row in rows:
        commit, message = "", ""
        if readable:
            try:
                history = repo.history(row.fetcher_name)
            except RepositoryError:
                history = []
            if history:
                commit, message = history[0].sha, history[0].message
        found.append(Version(_fetcher(row), row.created_at, commit, message))
    return found


def fetcher_by_id(db: StateDB, fetcher_id: int) -> FetcherVersion | None:
    with db.transaction(write=False) as connection:
        row = connection.execute(select(FETCHERS).where(FETCHERS.c.id == fetcher_id)).first()
    return _fetcher(row) if row is not None else None


def commit_candidate(config: HydraConfig, name: str, source: str, message: str) -> str:
    """Commit an approved candidate to the fetchers repository (again with the same code:
    already there, kept); the commit id, or "" when it was there."""
    repo = FetcherRepository.from_config(config)
    repo.open()
    path = repo.module_path(name)
    if path.exists() and path.read_text(encoding="utf-8") == source:
        return ""
    return repo.commit(name, source, message).sha


# -- a review's kept files -------------------------------------------------------------


def review_folder(config: HydraConfig, review: Job) -> Path | None:
    """``{store}/{channel_id}/{job_id}/review`` of a local store (None for S3)."""
    if not config.store_uri.startswith("file:"):
        return None
    root = LocalStore.from_uri(config.store_uri).root
    try:
        folder = root / _relative(review.channel_id) / _relative(review.job_id) / "review"
    except ValueError:
        return None
    return folder


def review_files(folder: Path | None) -> list[str]:
    """The HAR and PNG files of the folder (relative POSIX paths), each inside it."""
    if folder is None or not folder.is_dir():
        return []
    inside = folder.resolve()
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix in CONTENT_TYPES and path.is_file() and path.resolve().is_relative_to(inside)
    )


def review_file(folder: Path | None, relative: str) -> Path:
    """The file at ``relative`` inside the folder; ``LookupError`` for anything else (a
    path leaving it, a symlink out, another kind of file, one too large)."""
    if folder is None:
        raise LookupError("files are not in a local store")
    try:
        path = folder / _relative(relative)
    except ValueError as exc:
        raise LookupError(str(exc)) from None
    if path.suffix not in CONTENT_TYPES or not path.is_file():
        raise LookupError("no such file")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise LookupError("the file leaves its review folder")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise LookupError("too large to serve")
    return path
