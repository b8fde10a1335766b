"""The state database (``crawlers.db``) on SQLite files in tmp_path.

``StateDBBehaviour`` holds what must hold on every backend (every call,
idempotency under redelivery, retry limits, migrations that build exactly the
models' schema, concurrent upgrades); ``tests/integration/test_state_db_postgres.py``
runs it again on a real PostgreSQL. The rest is SQLite's and the command's own.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from scrapy import Spider
from scrapy.utils.test import get_crawler
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import Engine

from crawlers.config import project_path
from crawlers.db import (
    DEFAULT_RETRY_POLICY,
    Base,
    RetryPolicy,
    StateDB,
    StateDBError,
    alembic_config,
    head_revision,
    state,
)
from crawlers.db.models import JobRun
from tests.conftest import ROOT, worker_env

T = TypeVar("T")
HASH_A, HASH_B, HASH_C = "a" * 64, "b" * 64, "c" * 64
TABLES = {
    "fetcher_details",
    "channel_fetcher_details",
    "job_runs",
    "file_metadata",
    "retry_config",
    # the scheduler's (0002)
    "task_configs",
    "task_config_versions",
    "scheduled_jobs",
    "job_transitions",
    "trigger_fires",
}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def _published_job(db: StateDB, job_id: str, channel_id: str) -> None:
    """A job whose files reached the parsers: the only history dedup trusts."""
    await db.start_job(job_id=job_id, channel_id=channel_id, source_type="s3", metadata={})
    await db.mark_published(job_id, "parsers")


def schema_diff(engine: Engine) -> list[Any]:
    """What ``alembic check`` would report: the models against the database."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


UPGRADE_AT = """
import sys, time
from crawlers.db import StateDB
db = StateDB(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
db.upgrade()
print(db.current_revision())
"""


def upgrade_in_processes(url: str, processes: int = 2) -> list[str]:
    """``processes`` Python processes calling ``upgrade()`` at the same instant."""
    at = time.time() + 4  # after every interpreter has imported crawlers.db
    command = [sys.executable, "-c", UPGRADE_AT, url, str(at)]
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    children = [
        subprocess.Popen(command, cwd=ROOT, env=worker_env(), **pipes) for _ in range(processes)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-3000:]
        outputs.append(out.strip())
    return outputs


class StateDBBehaviour:
    """Backend-independent behaviour; a subclass provides the ``db_url`` fixture
    (a new, empty database for each test)."""

    @pytest.fixture
    def db_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def db(self, db_url: str) -> Iterator[StateDB]:
        db = StateDB(db_url)
        db.upgrade()
        yield db
        db.dispose()

    @pytest.fixture
    def engine(self, db_url: str) -> Iterator[Engine]:
        """A plain engine on the same database, to look behind StateDB's back."""
        engine = create_engine(StateDB(db_url).url)
        yield engine
        engine.dispose()

    # -- migrations ------------------------------------------------------------

    def test_open_migrates_to_head_once(self, db_url: str, engine: Engine) -> None:
        db = StateDB(db_url)
        assert db.current_revision() is None

        async def scenario() -> None:
            await db.open()
            await db.open()  # again: nothing to do
            await db.close()

        run(scenario())
        assert db.current_revision() == head_revision() == "0003_job_retention"
        db.dispose()
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert count(engine, "SELECT count(*) FROM retry_config") == 1

    def test_migrations_build_exactly_the_models_schema(self, db_url: str, engine: Engine) -> None:
        before = schema_diff(engine)
        assert {diff[1].name for diff in before if diff[0] == "add_table"} == TABLES  # not vacuous
        db = StateDB(db_url)
        db.upgrade()
        db.dispose()
        assert schema_diff(engine) == []

    def test_downgrade_then_upgrade_again(self, db: StateDB, engine: Engine) -> None:
        with engine.connect() as connection, connection.begin():
            command.downgrade(alembic_config(connection), "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        db.upgrade()
        assert schema_diff(engine) == []
        assert run(db.retry_policy("any")) == DEFAULT_RETRY_POLICY

    def test_a_scheduler_database_at_0002_gains_the_retention_index(
        self, db: StateDB, engine: Engine
    ) -> None:
        def indexes() -> set[str]:
            return {str(index["name"]) for index in inspect(engine).get_indexes("scheduled_jobs")}

        assert "ix_scheduled_jobs_state_finished_at" in indexes()
        with engine.connect() as connection, connection.begin():
            command.downgrade(alembic_config(connection), "0002_scheduler")
        assert "ix_scheduled_jobs_state_finished_at" not in indexes()
        assert "ix_scheduled_jobs_state_id" in indexes()  # 0002's are kept
        db.upgrade()
        assert db.current_revision() == "0003_job_retention"
        assert "ix_scheduled_jobs_state_finished_at" in indexes()
        assert schema_diff(engine) == []

    def test_calls_before_open_are_refused(self, db_url: str) -> None:
        db = StateDB(db_url)
        with pytest.raises(StateDBError, match="open"):
            run(db.job("j1"))
        db.upgrade()
        run(db.close())
        with pytest.raises(StateDBError, match="open"):
            run(db.job("j1"))  # closed: open again first

    def test_threads_opening_at_once(self, db_url: str, engine: Engine) -> None:
        databases = [StateDB(db_url) for _ in range(3)]

        async def scenario() -> None:
            await asyncio.gather(*(db.open() for db in databases))
            await asyncio.gather(*(db.close() for db in databases))

        run(scenario())
        assert {db.current_revision() for db in databases} == {head_revision()}
        assert count(engine, "SELECT count(*) FROM retry_config") == 1
        assert schema_diff(engine) == []

    def test_processes_upgrading_at_once(self, db_url: str, engine: Engine) -> None:
        assert upgrade_in_processes(db_url) == [head_revision()] * 2
        assert count(engine, "SELECT count(*) FROM alembic_version") == 1
        assert count(engine, "SELECT count(*) FROM retry_config") == 1
        assert schema_diff(engine) == []

    # -- retry limits ----------------------------------------------------------

    def test_retry_defaults_and_overrides(self, db: StateDB) -> None:
        own = RetryPolicy(max_simple_retries=5, max_heal_retries=0, retry_delay_seconds=1.5)

        async def scenario() -> list[RetryPolicy]:
            seen = [await db.retry_policy("ch1")]
            await db.set_retry_policy("ch1", own)
            seen.append(await db.retry_policy("ch1"))
            seen.append(await db.retry_policy("ch2"))
            await db.set_retry_policy("ch1", RetryPolicy(6, 1, 2))  # upsert
            await db.set_retry_policy(None, RetryPolicy(1, 1, 10))  # the defaults
            seen.append(await db.retry_policy("ch1"))
            seen.append(await db.retry_policy("ch2"))
            return seen

        assert run(scenario()) == [
            RetryPolicy(3, 2, 30.0),  # seeded by the migration
            own,
            RetryPolicy(3, 2, 30.0),
            RetryPolicy(6, 1, 2.0),
            RetryPolicy(1, 1, 10.0),
        ]

    def test_retry_defaults_row_missing(self, db: StateDB, engine: Engine) -> None:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM retry_config"))
        assert run(db.retry_policy("ch1")) == DEFAULT_RETRY_POLICY
        run(db.set_retry_policy(None, RetryPolicy(2, 2, 5)))
        run(db.set_retry_policy(None, RetryPolicy(4, 2, 5)))
        assert count(engine, "SELECT count(*) FROM retry_config WHERE channel_id IS NULL") == 1
        assert run(db.retry_policy("ch1")) == RetryPolicy(4, 2, 5.0)

    # -- files -----------------------------------------------------------------

    def test_record_file_keeps_one_row_with_the_newest_hash(self, db: StateDB) -> None:
        async def scenario() -> None:
            for content_hash in (HASH_B, HASH_B, HASH_A):  # a redelivery, even with new bytes
                await db.record_file(
                    job_id="j1", channel_id="ch1", file_path="in/a.csv",
                    content_hash=content_hash, file_size=10,
                )  # fmt: skip
            await db.record_file(
                job_id="j1", channel_id="ch1", file_path="in/b.csv",
                content_hash=HASH_C.upper(), file_size=0,
            )  # fmt: skip

        run(scenario())
        files = run(db.files_of("j1"))
        assert [(f.file_path, f.content_hash, f.file_size) for f in files] == [
            ("in/a.csv", HASH_A, 10),
            ("in/b.csv", HASH_C, 0),
        ]
        assert {(f.job_id, f.channel_id) for f in files} == {("j1", "ch1")}
        assert run(db.files_of("nope")) == []

    def test_record_file_validates(self, db: StateDB) -> None:
        good: dict[str, Any] = {
            "job_id": "j1", "channel_id": "ch1", "file_path": "a", "content_hash": HASH_A,
            "file_size": 1,
        }  # fmt: skip
        for bad in ({"content_hash": "abc"}, {"content_hash": "z" * 64}, {"file_size": -1},
                    {"file_path": ""}):  # fmt: skip
            with pytest.raises(ValueError):
                run(db.record_file(**{**good, **bad}))
        assert run(db.files_of("j1")) == []

    def test_previous_hash_is_the_latest_of_other_jobs(self, db: StateDB) -> None:
        async def record(
            job: str, content_hash: str, channel: str = "ch1", path: str = "a"
        ) -> None:
            await _published_job(db, job, channel)
            await db.record_file(
                job_id=job, channel_id=channel, file_path=path, content_hash=content_hash,
                file_size=1,
            )  # fmt: skip

        async def scenario() -> list[str | None]:
            seen = [await db.previous_hash("ch1", "a", excluding_job="j1")]
            await record("j1", HASH_A)
            seen.append(await db.previous_hash("ch1", "a", excluding_job="j1"))  # its own
            seen.append(await db.previous_hash("ch1", "a", excluding_job="j2"))
            await record("j2", HASH_B)
            await record("j2", HASH_C, path="b")  # another path
            await record("j9", HASH_C, channel="ch2")  # another channel
            seen.append(await db.previous_hash("ch1", "a", excluding_job="j3"))
            seen.append(await db.previous_hash("ch1", "a", excluding_job="j2"))
            seen.append(await db.previous_hash("ch2", "a", excluding_job="j3"))
            seen.append(await db.previous_hash("ch1", "c", excluding_job="j3"))
            return seen

        assert run(scenario()) == [None, None, HASH_A, HASH_B, HASH_A, HASH_C, None]

    def test_previous_hash_ignores_jobs_that_never_told_the_parsers(self, db: StateDB) -> None:
        """A job that failed after storing a file must not make the next one skip it."""

        async def scenario() -> list[str | None]:
            await _published_job(db, "j1", "ch1")
            await db.record_file(job_id="j1", channel_id="ch1", file_path="a",
                                 content_hash=HASH_A, file_size=1)  # fmt: skip
            await db.start_job(job_id="j2", channel_id="ch1", source_type="s3", metadata={})
            await db.record_file(job_id="j2", channel_id="ch1", file_path="a",
                                 content_hash=HASH_B, file_size=1)  # fmt: skip
            seen = [await db.previous_hash("ch1", "a", excluding_job="j3")]
            await db.mark_published("j2", "parsers")
            seen.append(await db.previous_hash("ch1", "a", excluding_job="j3"))
            return seen

        assert run(scenario()) == [HASH_A, HASH_B]

    def test_redelivered_job_compares_against_the_same_history(self, db: StateDB) -> None:
        """A job killed after recording a file asks again: the answer must not be its own row."""

        async def attempt() -> tuple[str | None, str | None]:
            answers = (
                await db.previous_hash("ch1", "a", excluding_job="j2"),
                await db.previous_hash("ch1", "new", excluding_job="j2"),
            )
            for path in ("a", "new"):
                await db.record_file(
                    job_id="j2", channel_id="ch1", file_path=path, content_hash=HASH_B,
                    file_size=1,
                )  # fmt: skip
            return answers

        run(_published_job(db, "j1", "ch1"))
        run(db.record_file(job_id="j1", channel_id="ch1", file_path="a", content_hash=HASH_A,
                           file_size=1))  # fmt: skip
        first, second = run(attempt()), run(attempt())
        assert first == second == (HASH_A, None)
        assert len(run(db.files_of("j2"))) == 2

    def test_concurrent_calls(self, db: StateDB) -> None:
        async def job(index: int) -> None:
            await db.start_job(job_id=f"j{index}", channel_id="ch1", source_type="s3", metadata={})
            for path in ("a", "b"):
                await db.record_file(
                    job_id=f"j{index}", channel_id="ch1", file_path=path, content_hash=HASH_A,
                    file_size=index,
                )  # fmt: skip
            await db.finish_job(job_id=f"j{index}", status="success", message="", metadata={})

        async def scenario() -> None:
            await asyncio.gather(*(job(index) for index in range(12)))

        run(scenario())
        for index in range(12):
            record = run(db.job(f"j{index}"))
            assert record is not None and record.status == "success"
            assert len(run(db.files_of(f"j{index}"))) == 2

    # -- jobs ------------------------------------------------------------------

    def test_job_lifecycle(self, db: StateDB) -> None:
        metadata = {"remote_path": "/in", "heal_mode": False, "note": "naïve ✓", "n": [1, 2]}

        async def scenario() -> None:
            assert await db.job("j1") is None
            await db.start_job(job_id="j1", channel_id="ch1", source_type="ftp", metadata=metadata)
            started = await db.job("j1")
            assert started is not None
            assert (started.status, started.message, started.metadata) == ("running", "", metadata)
            assert (started.channel_id, started.source_type) == ("ch1", "ftp")
            assert started.parsers_published_at is started.status_published_at is None
            await db.finish_job(
                job_id="j1", status="requires_human_review", message="site changed",
                metadata={"files_processed": 3, "heal_mode": True},
            )  # fmt: skip
            done = await db.job("j1")
            assert done is not None
            assert (done.status, done.message) == ("requires_human_review", "site changed")
            assert done.metadata == {**metadata, "files_processed": 3, "heal_mode": True}
            assert done.created_at == started.created_at <= started.updated_at <= done.updated_at

        run(scenario())

    def test_timestamps_are_aware_utc(self, db: StateDB) -> None:
        before = datetime.now(UTC)
        run(db.start_job(job_id="j1", channel_id="ch1", source_type="s3", metadata={}))
        run(db.record_file(job_id="j1", channel_id="ch1", file_path="a", content_hash=HASH_A,
                           file_size=1))  # fmt: skip
        run(db.mark_published("j1", "status"))
        record = run(db.job("j1"))
        assert record is not None
        (file,) = run(db.files_of("j1"))
        moments = [
            record.created_at,
            record.updated_at,
            record.status_published_at,
            file.created_at,
        ]
        for moment in moments:
            assert moment is not None and moment.utcoffset() == timedelta(0)
            assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)

    def test_redelivered_job_keeps_creation_and_publications(self, db: StateDB) -> None:
        async def scenario() -> None:
            await db.start_job(job_id="j1", channel_id="ch1", source_type="s3", metadata={"a": 1})
            await db.finish_job(job_id="j1", status="success", message="ok", metadata={"b": 2})
            await db.mark_published("j1", "parsers")
            first = await db.job("j1")
            assert first is not None and first.parsers_published_at is not None
            # the message comes back (the worker died before acking it)
            await db.start_job(job_id="j1", channel_id="ch1", source_type="s3", metadata={"a": 1})
            again = await db.job("j1")
            assert again is not None
            assert (again.status, again.message, again.metadata) == ("running", "", {"a": 1})
            assert again.created_at == first.created_at
            assert again.parsers_published_at == first.parsers_published_at  # skip it this time
            assert again.status_published_at is None

        run(scenario())

    def test_mark_published_keeps_the_first_time(self, db: StateDB, engine: Engine) -> None:
        async def scenario() -> None:
            await db.start_job(job_id="j1", channel_id="ch1", source_type="s3", metadata={})
            await db.mark_published("j1", "status")
            first = await db.job("j1")
            await asyncio.sleep(0.01)
            await db.mark_published("j1", "status")
            again = await db.job("j1")
            assert first is not None and again is not None
            assert again.status_published_at == first.status_published_at is not None
            assert again.parsers_published_at is None
            await db.mark_published("j1", "parsers")
            both = await db.job("j1")
            assert both is not None and both.parsers_published_at is not None

        run(scenario())
        with engine.connect() as connection:
            rows = connection.execute(select(func.count()).select_from(JobRun)).scalar_one()
        assert rows == 1

    def test_job_errors(self, db: StateDB) -> None:
        with pytest.raises(LookupError, match="j9"):
            run(db.finish_job(job_id="j9", status="failed", message="", metadata={}))
        with pytest.raises(LookupError, match="j9"):
            run(db.mark_published("j9", "parsers"))
        run(db.start_job(job_id="j1", channel_id="ch1", source_type="s3", metadata={}))
        for status in ("running", "done", ""):
            with pytest.raises(ValueError, match="status"):
                run(db.finish_job(job_id="j1", status=status, message="", metadata={}))
        with pytest.raises(ValueError, match="topic"):
            run(db.mark_published("j1", "other"))  # type: ignore[arg-type]
        record = run(db.job("j1"))
        assert record is not None and record.status == "running"


class TestSQLite(StateDBBehaviour):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        (tmp_path / "state").mkdir()  # for the plain engine; StateDB makes it itself
        return f"sqlite:///{tmp_path}/state/hydra.db"


# -- SQLite and the object itself -------------------------------------------------


def test_constructor_does_no_io(tmp_path: Path) -> None:
    db = StateDB(f"sqlite:///{tmp_path}/new/dir/hydra.db")
    assert not (tmp_path / "new").exists()
    assert db.current_revision() is None  # and asking creates nothing either
    assert not (tmp_path / "new").exists()
    db.upgrade()
    assert (tmp_path / "new" / "dir" / "hydra.db").is_file()
    db.dispose()


def test_relative_sqlite_paths_are_under_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "crawlers")  # the project is found from any directory in it
    assert StateDB("sqlite:///output/hydra.db").url.database == str(ROOT / "output/hydra.db")
    assert project_path("output/hydra.db") == ROOT / "output/hydra.db"
    assert StateDB("sqlite:////abs/state.db").url.database == "/abs/state.db"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:s3cret@host/db", "unsupported database 'mysql'"),
        ("sqlite://", "file path"),
        ("sqlite:///:memory:", "file path"),
        ("not a url", "not a database URL"),
    ],
)
def test_unusable_urls(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        StateDB(url)
    assert "s3cret" not in str(raised.value)


def test_describe_never_shows_the_password() -> None:
    db = StateDB("postgresql+psycopg://hydra:s3cret@db.example:5432/state")
    assert db.describe() == "postgresql+psycopg://hydra:***@db.example:5432/state"
    assert db.backend == "postgresql"


def test_from_crawler_reads_hydra_db_url(tmp_path: Path) -> None:
    crawler = get_crawler(Spider, {"HYDRA_DB_URL": f"sqlite:///{tmp_path}/c.db"})
    assert StateDB.from_crawler(crawler).url.database == f"{tmp_path}/c.db"


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(-1, 0, 1)
    with pytest.raises(ValueError):
        RetryPolicy(1, 0, float("nan"))
    assert RetryPolicy(0, 0, 0).retry_delay_seconds == 0


def test_sqlite_is_shared_safely(tmp_path: Path) -> None:
    db = StateDB(f"sqlite:///{tmp_path}/h.db")
    db.upgrade()
    with sqlite3.connect(tmp_path / "h.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.dispose()


def test_upgrade_retries_while_another_process_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.6, holder.execute, ("COMMIT",)).start()
    db = StateDB(f"sqlite:///{path}", busy_timeout=0.2)  # gives up waiting before the commit
    db.upgrade()
    assert db.current_revision() == head_revision()
    db.dispose()
    holder.close()


def test_waiting_for_the_database_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    db = StateDB(f"sqlite:///{path}")
    db.upgrade()

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        ticking = asyncio.create_task(ticker())
        write = asyncio.create_task(
            db.record_file(job_id="j1", channel_id="ch1", file_path="a", content_hash=HASH_A,
                           file_size=1)
        )  # fmt: skip
        await asyncio.sleep(0.5)
        assert not write.done()
        seen = ticks
        holder.execute("COMMIT")
        holder.close()
        await write
        ticking.cancel()
        return seen

    assert run(scenario()) >= 20
    assert len(run(db.files_of("j1"))) == 1
    db.dispose()


def test_migrations_run_from_a_zipped_egg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapyd imports the project from a zipped egg: Alembic gets the migrations copied out."""
    egg = tmp_path / "project.egg"
    source = ROOT / "crawlers/db/migrations"
    with zipfile.ZipFile(egg, "w") as archive:
        for path in source.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, f"crawlers/db/migrations/{path.relative_to(source)}")
    monkeypatch.setattr(state.resources, "files", lambda _: zipfile.Path(egg, "crawlers/db/"))
    state.migrations_dir.cache_clear()
    try:
        copied = state.migrations_dir()
        assert copied != source and (copied / "versions/0001_fetch_state.py").is_file()
        db = StateDB(f"sqlite:///{tmp_path}/h.db")
        db.upgrade()
        assert db.current_revision() == head_revision()
        db.dispose()
    finally:
        monkeypatch.undo()
        state.migrations_dir.cache_clear()
    assert state.migrations_dir() == source


BATCH_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "0099_recreate"
down_revision = "{head}"
branch_labels = depends_on = None


def upgrade():
    with op.batch_alter_table("fetcher_details", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.String(10), nullable=True))
"""


def test_sqlite_batch_migration_of_a_referenced_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later migration that rebuilds a table other rows point to (SQLite's only way to
    alter most things) must neither fail on the foreign keys nor lose them."""
    db = StateDB(f"sqlite:///{tmp_path}/h.db")
    db.upgrade()
    db.dispose()
    with sqlite3.connect(tmp_path / "h.db") as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute(
            "INSERT INTO fetcher_details (structure_id, fetcher_name, version, created_at) "
            "VALUES ('example.com', 'example_com_fetcher_v1', 1, '2026-01-01 00:00:00')"
        )
        connection.execute(
            "INSERT INTO channel_fetcher_details (channel_id, fetcher_id, config_json, "
            "created_at, updated_at) VALUES ('ch1', 1, '{}', '2026-01-01', '2026-01-01')"
        )
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "crawlers/db/migrations", migrations)
    (migrations / "versions/0099_recreate.py").write_text(
        BATCH_MIGRATION.format(head=head_revision())
    )
    monkeypatch.setattr(state, "migrations_dir", lambda: migrations)
    db.upgrade()
    assert db.current_revision() == "0099_recreate"
    db.dispose()
    connection = sqlite3.connect(tmp_path / "h.db")
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = connection.execute("SELECT channel_id, fetcher_id FROM channel_fetcher_details")
        assert rows.fetchall() == [("ch1", 1)]
        columns = [row[1] for row in connection.execute("PRAGMA table_info(fetcher_details)")]
        assert columns[-1] == "note"
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # still enforced
            connection.execute("DELETE FROM fetcher_details")
    finally:
        connection.close()


# -- `scrapy db` ---------------------------------------------------------------------


def scrapy_db(*args: str, expect: int, **settings: object) -> subprocess.CompletedProcess[str]:
    process = subprocess.run(
        [sys.executable, "-m", "scrapy", "db", *args],
        cwd=ROOT, env=worker_env(**settings), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert process.returncode == expect, process.stdout + process.stderr
    return process


def test_db_command_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/hydra.db"
    assert scrapy_db("current", expect=0, HYDRA_DB_URL=url).stdout == "none\n"
    assert not (tmp_path / "sub").exists()
    check = scrapy_db("check", expect=1, HYDRA_DB_URL=url)
    assert "not migrated" in check.stderr and "scrapy db upgrade" in check.stderr
    upgrade = scrapy_db("upgrade", expect=0, HYDRA_DB_URL=url)
    assert upgrade.stdout == (
        f"Upgraded sqlite:///{tmp_path}/sub/hydra.db from an empty database to 0003_job_retention\n"
    )
    assert (
        "already at 0003_job_retention" in scrapy_db("upgrade", expect=0, HYDRA_DB_URL=url).stdout
    )
    assert scrapy_db("current", expect=0, HYDRA_DB_URL=url).stdout == "0003_job_retention (head)\n"
    assert "is at head" in scrapy_db("check", expect=0, HYDRA_DB_URL=url).stdout


def test_db_command_on_a_database_from_a_newer_hydra(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hydra.db"
    db = StateDB(url)
    db.upgrade()
    db.dispose()
    with sqlite3.connect(tmp_path / "hydra.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099_future'")
    assert scrapy_db("current", expect=0, HYDRA_DB_URL=url).stdout == "0099_future\n"
    assert "does not know" in scrapy_db("check", expect=1, HYDRA_DB_URL=url).stderr
    upgrade = scrapy_db("upgrade", expect=1, HYDRA_DB_URL=url)
    assert upgrade.stderr.startswith("Database error at sqlite:///")
    assert "0099_future" in upgrade.stderr


def test_db_command_errors() -> None:
    usage = scrapy_db("downgrade", expect=2)
    assert "give one action: upgrade, current, check" in usage.stderr
    config = scrapy_db("current", expect=2, HYDRA_DB_URL="mysql://u:s3cret@h/db")
    assert config.stderr.startswith("Configuration error: HYDRA_DB_URL: unsupported database")
    unreachable = scrapy_db(
        "check", expect=1, HYDRA_DB_URL="postgresql://hydra:s3cret@127.0.0.1:1/state"
    )
    assert unreachable.stderr.startswith("Database error at postgresql://hydra:***@127.0.0.1:1/")
    assert "s3cret" not in unreachable.stdout + unreachable.stderr
