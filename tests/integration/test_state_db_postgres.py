"""The state database on a real PostgreSQL (``tests/dbfixtures.py``): the same
behaviour as on SQLite, the advisory lock that serialises upgrades, ``scrapy db``,
and the fixture's own-cluster fallback."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, text

from crawlers.db import StateDB, head_revision
from crawlers.db.state import MIGRATION_LOCK
from tests.dbfixtures import PostgresServer, start_private_cluster
from tests.unit.test_state_db import StateDBBehaviour, run, schema_diff, scrapy_db

pytestmark = pytest.mark.integration


class TestPostgres(StateDBBehaviour):
    @pytest.fixture
    def db_url(self, postgres_database: str) -> str:
        return postgres_database


def test_upgrade_waits_for_the_migration_lock(postgres_database: str) -> None:
    """Another process migrating (holding the lock): upgrade() waits, then finds head."""
    engine = create_engine(postgres_database)
    db = StateDB(postgres_database)
    finished: list[float] = []

    def upgrade() -> None:
        db.upgrade()
        finished.append(time.time())

    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        upgrading = threading.Thread(target=upgrade)
        upgrading.start()
        time.sleep(0.5)
        assert not finished and db.current_revision() is None
        released = time.time()
        holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        holder.commit()
        upgrading.join(30)
    assert finished and finished[0] >= released
    assert db.current_revision() == head_revision()
    assert schema_diff(engine) == []
    db.dispose()
    engine.dispose()


def test_session_database(postgres_url: str) -> None:
    db = StateDB(postgres_url)
    run(db.open())
    run(db.start_job(job_id="session", channel_id="ch1", source_type="s3", metadata={}))
    record = run(db.job("session"))
    assert record is not None and record.status == "running"
    run(db.close())


def test_db_command_on_postgres(postgres_database: str) -> None:
    check = scrapy_db("check", expect=1, HYDRA_DB_URL=postgres_database)
    assert "not migrated" in check.stderr
    upgrade = scrapy_db("upgrade", expect=0, HYDRA_DB_URL=postgres_database)
    assert upgrade.stdout.startswith("Upgraded postgresql+psycopg://***@127.0.0.1:")
    current = scrapy_db("current", expect=0, HYDRA_DB_URL=postgres_database)
    assert current.stdout == "0003_job_retention (head)\n"
    scrapy_db("check", expect=0, HYDRA_DB_URL=postgres_database)


def test_wrong_password_is_never_shown(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("postgres").replace("postgres@", "nobody:s3cret@", 1)
    process = scrapy_db("check", expect=1, HYDRA_DB_URL=url)
    assert process.stderr.startswith("Database error at postgresql+psycopg://nobody:***@")
    assert "s3cret" not in process.stdout + process.stderr


def test_private_cluster_fallback() -> None:
    """What the fixture starts when nothing answers on 5432 (as on a bare machine)."""
    server = start_private_cluster()
    try:
        assert server.port != 5432 and server.answers()
        url = server.create_database()
        db = StateDB(url)
        db.upgrade()
        assert db.current_revision() == head_revision()
        db.dispose()
    finally:
        server.stop()
    assert not server.answers()
