"""``StateDB``: the fetch service's state (jobs, file hashes, retry limits) in SQL.

Every call is a short transaction on one SQLAlchemy engine, run in a thread
(``asyncio.to_thread``), so a blocking driver never stalls the reactor's event
loop. Writes are idempotent where a redelivered message repeats them: a job is
upserted by its id and keeps its creation time and publication marks, a file is
recorded once per job and path, and :meth:`StateDB.previous_hash` ignores the
asking job's own rows, so a second attempt compares against the same history as
the first.

Migrations (Alembic, ``crawlers/db/migrations``) are applied by
:meth:`StateDB.open`; workers that start together upgrade one after the other
(SQLite: ``BEGIN IMMEDIATE`` on the file, plus retries; PostgreSQL: an advisory
lock). SQLite runs in WAL mode with a busy timeout, so several processes can
share one file. URLs are only ever shown redacted.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Table, create_engine, event, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from crawlers.config import HydraConfig, project_path
from crawlers.db.models import JOB_STATUSES, Base, JobStatus, utcnow
from crawlers.models.redaction import redact_url

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from scrapy.crawler import Crawler
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

logger = logging.getLogger(__name__)

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
Topic = Literal["parsers", "status"]
FINAL_STATUSES: tuple[str, ...] = tuple(s for s in JOB_STATUSES if s != "running")
#: PostgreSQL advisory lock keys (64-bit, fixed): the migration, and the defaults row
MIGRATION_LOCK = zlib.crc32(b"hydra:state-db:migrations")
DEFAULTS_LOCK = zlib.crc32(b"hydra:state-db:retry-defaults")
#: how long SQLite waits for another process's write lock, seconds
SQLITE_BUSY_TIMEOUT = 30.0
#: seconds to wait for a PostgreSQL connection
PG_CONNECT_TIMEOUT = 10
#: SQLite upgrade attempts when another process holds the file or raced the DDL
UPGRADE_ATTEMPTS = 5
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: execution option asking for ``BEGIN IMMEDIATE`` on SQLite (take the write lock first)
_WRITE = "hydra_write"

FILES = Base.metadata.tables["file_metadata"]
JOBS = Base.metadata.tables["job_runs"]
RETRY = Base.metadata.tables["retry_config"]


class StateDBError(RuntimeError):
    """The state database cannot be used as it is (unknown revision, not opened).
    The message never holds a password."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often a channel's job is retried plainly, then healed, and how long apart."""

    max_simple_retries: int
    max_heal_retries: int
    retry_delay_seconds: float

    def __post_init__(self) -> None:
        if self.max_simple_retries < 0 or self.max_heal_retries < 0:
            raise ValueError("retry counts must be 0 or more")
        if not (math.isfinite(self.retry_delay_seconds) and self.retry_delay_seconds >= 0):
            raise ValueError("retry_delay_seconds must be a finite number, 0 or more")


#: seed 003's defaults: what the first migration seeds, and the answer if that row is gone
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_simple_retries=3, max_heal_retries=2, retry_delay_seconds=30.0
)


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of a ``job_runs`` row; the ``*_published_at`` marks let a
    redelivered job skip publications already made."""

    job_id: str
    channel_id: str
    source_type: str
    status: JobStatus
    message: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    parsers_published_at: datetime | None
    status_published_at: datetime | None


@dataclass(frozen=True)
class FileRecord:
    """A snapshot of a ``file_metadata`` row."""

    job_id: str
    channel_id: str
    file_path: str
    content_hash: str
    file_size: int
    created_at: datetime


@cache
def migrations_dir() -> Path:
    """The migrations as a directory Alembic can list: in place, or, when the package
    runs from a zipped egg (Scrapyd), copied out to a temporary directory once."""
    source = resources.files("crawlers.db") / "migrations"
    if isinstance(source, Path) and source.is_dir():
        return source
    target = Path(tempfile.mkdtemp(prefix="hydra-migrations-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    _copy_tree(source, target)
    return target


def _copy_tree(source: Traversable, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                _copy_tree(entry, target / entry.name)
        elif entry.name.endswith((".py", ".mako")):
            (target / entry.name).write_bytes(entry.read_bytes())


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration, built in Python (no alembic.ini): the migrations
    inside the package, and the connection to migrate (or a URL, for offline SQL)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s")  # rev_id="0002_what" -> 0002_what.py
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this code has."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations in crawlers/db/migrations"
    return head


def known_revision(revision: str) -> bool:
    """Whether this code has that migration (else a newer Hydra wrote the database)."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def parse_db_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it, or ``ValueError`` (saying why, without the password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {redact_url(url)!r}") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(f"unsupported database {backend!r} (use sqlite:/// or postgresql://)")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ValueError(
                "SQLite needs a file path (sqlite:///relative/path.db or sqlite:////abs/path.db), "
                "shared by every process"
            )
    return parsed


class StateDB:
    """The state database of one process; safe to share between threads and tasks.

    Build it with no I/O (``StateDB(url)`` or :meth:`from_crawler`), then
    ``await open()`` (or ``upgrade()`` outside an event loop) before any other call.
    """

    def __init__(self, url: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> None:
        self._given = parse_db_url(url)
        self.backend = self._given.get_backend_name()
        self._busy_timeout = busy_timeout
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StateDB:
        return cls(HydraConfig.from_crawler(crawler).db_url)

    @cached_property
    def url(self) -> URL:
        """The URL connected to: a relative SQLite path made absolute against the project
        (looked up on first use, not in the constructor)."""
        if self.backend == "sqlite":
            return self._given.set(database=str(project_path(self._given.database or "")))
        return self._given

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.database or "") if self.backend == "sqlite" else None

    def describe(self) -> str:
        """The URL, safe to print or log."""
        return redact_url(self.url.render_as_string(hide_password=False))

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Apply the migrations (in a thread), then the other calls may be used."""
        await asyncio.to_thread(self.upgrade)

    def upgrade(self) -> None:
        """Migrate the database to the newest revision; safe while other processes do too."""
        path = self.sqlite_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = self._get_engine()
        for attempt in range(1, UPGRADE_ATTEMPTS + 1):
            try:
                before, after = self._upgrade_once(engine)
                break
            except OperationalError as exc:
                # another process won the race on SQLite: once its transaction is in,
                # a new attempt finds the schema at head and does nothing
                if path is None or attempt == UPGRADE_ATTEMPTS or not _sqlite_race(exc):
                    raise
                logger.info("State database busy (attempt %d), retrying the upgrade", attempt)
                time.sleep(0.2 * attempt)
        self._ready = True
        if before != after:
            logger.info("State database %s migrated from %s to %s", self.describe(), before, after)
        logger.info("State database ready at %s (revision %s)", self.describe(), after)

    def _upgrade_once(self, engine: Engine) -> tuple[str | None, str | None]:
        with engine.connect() as connection:
            connection.execution_options(**{_WRITE: True})
            sqlite_file = self.backend == "sqlite"
            if sqlite_file:
                # batch migrations copy a table and drop the old one, which SQLite's
                # foreign keys refuse; they can only be switched off outside a transaction,
                # so off for the upgrade, checked before its commit, on again after
                _sqlite_pragma(connection, "foreign_keys = OFF")
            try:
                with connection.begin():
                    if not sqlite_file:
                        # released at commit: the next process then finds the schema at head
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                        )
                    before = MigrationContext.configure(connection).get_current_revision()
                    try:
                        command.upgrade(alembic_config(connection), "head")
                    except CommandError as exc:
                        raise StateDBError(
                            f"cannot migrate the state database at {self.describe()} "
                            f"(revision {before}): {exc}; is it from a newer Hydra?"
                        ) from None
                    after = MigrationContext.configure(connection).get_current_revision()
                    if sqlite_file:
                        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise StateDBError(
                                f"migrating to {after} broke foreign keys of {broken[:5]}; "
                                "nothing was changed"
                            )
            finally:
                if sqlite_file:
                    _sqlite_pragma(connection, "foreign_keys = ON")
        return before, after

    def current_revision(self) -> str | None:
        """The database's revision (None when not migrated, or a SQLite file that does
        not exist: it is not created here)."""
        path = self.sqlite_path
        if path is not None and not path.exists():
            return None
        with self._lock:
            engine = self._engine
        temporary = engine is None  # not open: leave no pool behind
        engine = self._create_engine() if engine is None else engine
        try:
            with engine.connect() as connection:
                heads = MigrationContext.configure(connection).get_current_heads()
        finally:
            if temporary:
                engine.dispose()
        return ",".join(heads) if heads else None

    async def close(self) -> None:
        await asyncio.to_thread(self.dispose)

    def dispose(self) -> None:
        """Close the pool's connections; a later ``open()`` starts again."""
        with self._lock:
            engine, self._engine, self._ready = self._engine, None, False
        if engine is not None:
            engine.dispose()

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        if self.backend != "sqlite":
            # an unreachable server is an error after seconds, not a hang of minutes
            return create_engine(
                self.url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT}
            )
        engine = create_engine(
            self.url, pool_pre_ping=True, connect_args={"timeout": self._busy_timeout}
        )
        busy_ms = int(self._busy_timeout * 1000)

        def on_connect(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
            # SQLAlchemy emits BEGIN itself (on_begin), so a transaction that reads
            # before it writes holds the write lock from its start
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        def on_begin(connection: Connection) -> None:
            write = connection.get_execution_options().get(_WRITE, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        if not self._ready:
            raise StateDBError("StateDB is not open: call `await open()` (or upgrade()) first")
        with self._get_engine().connect() as connection:
            if write:
                connection.execution_options(**{_WRITE: True})
            with connection.begin():
                yield connection

    def transaction(self, *, write: bool) -> AbstractContextManager[Connection]:
        """A connection in a transaction, for the parts that keep their own tables'
        queries (the fetcher catalog); blocking: call it in a thread."""
        return self._transaction(write=write)

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ``on_conflict_do_update`` on this backend."""
        return self._insert(table)

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.backend == "postgresql" else sqlite.insert(table)

    # -- retry limits ----------------------------------------------------------

    async def retry_policy(self, channel_id: str) -> RetryPolicy:
        """The channel's own limits, else the defaults row."""
        return await asyncio.to_thread(self._retry_policy, channel_id)

    def _retry_policy(self, channel_id: str) -> RetryPolicy:
        query = (
            select(
                RETRY.c.max_simple_retries, RETRY.c.max_heal_retries, RETRY.c.retry_delay_seconds
            )
            .where((RETRY.c.channel_id == channel_id) | RETRY.c.channel_id.is_(None))
            .order_by(RETRY.c.channel_id.is_(None), RETRY.c.id)  # the channel's row first
            .limit(1)
        )
        with self._transaction(write=False) as connection:
            row = connection.execute(query).first()
        if row is None:
            logger.warning("No default row in retry_config; using %s", DEFAULT_RETRY_POLICY)
            return DEFAULT_RETRY_POLICY
        return RetryPolicy(row[0], row[1], float(row[2]))

    async def set_retry_policy(self, channel_id: str | None, policy: RetryPolicy) -> None:
        """Set a channel's limits, or the defaults (``channel_id=None``)."""
        await asyncio.to_thread(self._set_retry_policy, channel_id, policy)

    def _set_retry_policy(self, channel_id: str | None, policy: RetryPolicy) -> None:
        values = {
            "max_simple_retries": policy.max_simple_retries,
            "max_heal_retries": policy.max_heal_retries,
            "retry_delay_seconds": float(policy.retry_delay_seconds),
        }
        with self._transaction(write=True) as connection:
            if channel_id is not None:
                insert = self._insert(RETRY).values(channel_id=channel_id, **values)
                connection.execute(
                    insert.on_conflict_do_update(index_elements=[RETRY.c.channel_id], set_=values)
                )
                return
            # NULLs never conflict in a unique constraint: update the defaults row, or
            # insert it (serialised on PostgreSQL, so two operators make one row)
            if self.backend == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": DEFAULTS_LOCK}
                )
            done = connection.execute(
                update(RETRY).where(RETRY.c.channel_id.is_(None)).values(**values)
            )
            if done.rowcount == 0:
                connection.execute(RETRY.insert().values(channel_id=None, **values))

    # -- files -----------------------------------------------------------------

    async def previous_hash(
        self, channel_id: str, file_path: str, *, excluding_job: str
    ) -> str | None:
        """The hash this path had in the channel's latest other job that stored it
        and told the parsers about it (a failed job's files never reached them);
        the asking job's own rows are ignored, so a redelivery decides as its first try."""
        return await asyncio.to_thread(self._previous_hash, channel_id, file_path, excluding_job)

    def _previous_hash(self, channel_id: str, file_path: str, excluding_job: str) -> str | None:
        query = (
            select(FILES.c.content_hash)
            .join(JOBS, JOBS.c.job_id == FILES.c.job_id)
            .where(
                JOBS.c.parsers_published_at.is_not(None),
                FILES.c.channel_id == channel_id,
                FILES.c.file_path == file_path,
                FILES.c.job_id != excluding_job,
            )
            .order_by(FILES.c.id.desc())
            .limit(1)
        )
        with self._transaction(write=False) as connection:
            found: str | None = connection.execute(query).scalar()
        return found

    async def record_file(
        self, *, job_id: str, channel_id: str, file_path: str, content_hash: str, file_size: int
    ) -> None:
        """Record a stored file; again for the same job and path keeps the newest hash."""
        content_hash = content_hash.lower()
        if not _SHA256_HEX.fullmatch(content_hash):
            raise ValueError(f"content_hash must be a SHA-256 hex digest, not {content_hash!r}")
        if file_size < 0:
            raise ValueError("file_size must be 0 or more")
        if not file_path:
            raise ValueError("file_path must not be empty")
        values = {
            "job_id": job_id,
            "channel_id": channel_id,
            "file_path": file_path,
            "content_hash": content_hash,
            "file_size": file_size,
            "created_at": utcnow(),
        }
        await asyncio.to_thread(self._record_file, values)

    def _record_file(self, values: dict[str, Any]) -> None:
        insert = self._insert(FILES).values(**values)
        statement = insert.on_conflict_do_update(
            index_elements=[FILES.c.job_id, FILES.c.file_path],
            set_={
                "content_hash": insert.excluded.content_hash,
                "file_size": insert.excluded.file_size,
            },
        )
        with self._transaction(write=True) as connection:
            connection.execute(statement)

    async def files_of(self, job_id: str) -> list[FileRecord]:
        """The files a job recorded, in the order recorded."""
        return await asyncio.to_thread(self._files_of, job_id)

    def _files_of(self, job_id: str) -> list[FileRecord]:
        query = (
            select(
                FILES.c.job_id,
                FILES.c.channel_id,
                FILES.c.file_path,
                FILES.c.content_hash,
                FILES.c.file_size,
                FILES.c.created_at,
            )
            .where(FILES.c.job_id == job_id)
            .order_by(FILES.c.id)
        )
        with self._transaction(write=False) as connection:
            return [FileRecord(*row) for row in connection.execute(query)]

    # -- jobs ------------------------------------------------------------------

    async def start_job(
        self, *, job_id: str, channel_id: str, source_type: str, metadata: Mapping[str, Any]
    ) -> None:
        """Mark the job running; a redelivered job keeps its row's creation time and
        publication marks (its message and metadata start again)."""
        await asyncio.to_thread(self._start_job, job_id, channel_id, source_type, dict(metadata))

    def _start_job(
        self, job_id: str, channel_id: str, source_type: str, metadata: dict[str, Any]
    ) -> None:
        now = utcnow()
        again = {
            "channel_id": channel_id,
            "source_type": source_type,
            "status": "running",
            "message": "",
            "metadata_json": metadata,
            "updated_at": now,
        }
        insert = self._insert(JOBS).values(job_id=job_id, created_at=now, **again)
        statement = insert.on_conflict_do_update(index_elements=[JOBS.c.job_id], set_=again)
        with self._transaction(write=True) as connection:
            connection.execute(statement)

    async def finish_job(
        self, *, job_id: str, status: str, message: str, metadata: Mapping[str, Any]
    ) -> None:
        """Record the job's outcome (``success``, ``failed`` or ``requires_human_review``,
        else ``ValueError``); ``metadata`` is merged (shallowly) into what ``start_job``
        stored. ``LookupError`` for a job never started."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        await asyncio.to_thread(self._finish_job, job_id, status, message, dict(metadata))

    def _finish_job(self, job_id: str, status: str, message: str, metadata: dict[str, Any]) -> None:
        with self._transaction(write=True) as connection:
            current = connection.execute(
                select(JOBS.c.metadata_json).where(JOBS.c.job_id == job_id).with_for_update()
            ).first()
            if current is None:
                raise LookupError(f"no job {job_id!r} (start_job first)")
            connection.execute(
                update(JOBS)
                .where(JOBS.c.job_id == job_id)
                .values(
                    status=status,
                    message=message,
                    metadata_json={**(current[0] or {}), **metadata},
                    updated_at=utcnow(),
                )
            )

    async def job(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self._job, job_id)

    def _job(self, job_id: str) -> JobRecord | None:
        query = select(
            JOBS.c.job_id,
            JOBS.c.channel_id,
            JOBS.c.source_type,
            JOBS.c.status,
            JOBS.c.message,
            JOBS.c.metadata_json,
            JOBS.c.created_at,
            JOBS.c.updated_at,
            JOBS.c.parsers_published_at,
            JOBS.c.status_published_at,
        ).where(JOBS.c.job_id == job_id)
        with self._transaction(write=False) as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        status: JobStatus = row.status
        return JobRecord(
            job_id=row.job_id,
            channel_id=row.channel_id,
            source_type=row.source_type,
            status=status,
            message=row.message,
            metadata=dict(row.metadata_json or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            parsers_published_at=row.parsers_published_at,
            status_published_at=row.status_published_at,
        )

    async def mark_published(self, job_id: str, topic: Topic) -> None:
        """Note that the job's message went to ``topic``; the first time is kept."""
        if topic not in get_args(Topic):
            raise ValueError(f"topic must be one of {', '.join(get_args(Topic))}, not {topic!r}")
        await asyncio.to_thread(self._mark_published, job_id, topic)

    def _mark_published(self, job_id: str, topic: Topic) -> None:
        column = JOBS.c[f"{topic}_published_at"]
        with self._transaction(write=True) as connection:
            done = connection.execute(
                update(JOBS)
                .where(JOBS.c.job_id == job_id, column.is_(None))
                .values({column: utcnow()})
            )
            if done.rowcount == 0:
                exists = connection.execute(select(JOBS.c.id).where(JOBS.c.job_id == job_id))
                if exists.first() is None:
                    raise LookupError(f"no job {job_id!r} (start_job first)")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    """A PRAGMA on the driver's connection itself: SQLAlchemy would begin a transaction
    first, in which some (``foreign_keys``) do nothing."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_race(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "database is locked" in message or "already exists" in message
