"""Database fixtures: a real PostgreSQL for the state database's integration tests.

``postgres_server`` uses the server on 127.0.0.1:5432 (user ``postgres``, trust
auth: developers' machines and CI have one), or else starts a private cluster
with Debian's ``initdb``/``pg_ctl`` in a temp dir on a free port, and fails with
what to install when neither works: these tests are never skipped. Each test
gets databases of its own (``postgres_database``), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.servers import free_port

SHARED_PORT = 5432
USER = "postgres"
INSTALL_HINT = (
    "install Debian's PostgreSQL (`apt-get install postgresql`) or run a server on "
    "127.0.0.1:5432 that lets user postgres in without a password"
)


class PostgresServer:
    """A PostgreSQL server the tests may create databases on (and, if started here, stop)."""

    def __init__(self, port: int, *, datadir: Path | None = None) -> None:
        self.port = port
        self.datadir = datadir
        self._databases: list[str] = []

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
            connect_timeout=5, autocommit=True,
        )  # fmt: skip

    def create_database(self) -> str:
        """A new, empty database (``hydra_test_<random>``); its SQLAlchemy URL."""
        name = f"hydra_test_{uuid.uuid4().hex[:16]}"
        with self._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as connection:
            # FORCE: a pool the test did not close must not keep the database alive
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            connection.execute(drop)
        if name in self._databases:
            self._databases.remove(name)

    def answers(self) -> bool:
        try:
            with self._admin() as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def stop(self) -> None:
        for name in list(self._databases):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(self.url(name))
        if self.datadir is not None:
            _run_as_owner([_binary("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"])
            shutil.rmtree(self.datadir.parent, ignore_errors=True)
            self.datadir = None


def _binary(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else the newest Debian one."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: [int(p) for p in Path(path).parts[4].split(".") if p.isdigit()],
    )
    if not versions:
        raise FileNotFoundError(name)
    return versions[-1]


def _owner() -> str | None:
    """initdb refuses to run as root: as root, the cluster is the ``postgres`` user's."""
    return USER if os.geteuid() == 0 else None


def _run_as_owner(command: list[str]) -> None:
    process = subprocess.run(command, capture_output=True, text=True, user=_owner(), check=False)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.strip()[-2000:]}")


def start_private_cluster() -> PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a new temp dir, on a free loopback port."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    owner = _owner()
    if owner is not None:
        try:
            account = pwd.getpwnam(owner)
        except KeyError:
            raise RuntimeError(f"running as root and there is no {owner!r} user") from None
    # in /tmp (not pytest's 0700 tmp dirs), so the cluster's owner can reach it
    base = Path(tempfile.mkdtemp(prefix="hydra-pg-"))
    if owner is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    datadir, port = base / "data", free_port()
    try:
        _run_as_owner([
            initdb, "-D", str(datadir), "-U", USER, "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        ])  # fmt: skip
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run_as_owner([
            pg_ctl, "-D", str(datadir), "-o", options, "-l", str(base / "server.log"),
            "-w", "-t", "60", "start",
        ])  # fmt: skip
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return PostgresServer(port, datadir=datadir)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    shared = PostgresServer(SHARED_PORT)
    if shared.answers():
        yield shared
        shared.stop()  # drops the databases the tests left
        return
    try:
        server = start_private_cluster()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.fail(
            f"No PostgreSQL for the state-database tests: nothing lets user {USER} in on "
            f"127.0.0.1:{SHARED_PORT}, and a private cluster could not be started ({exc}): "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of this test session (SQLAlchemy URL, psycopg 3), dropped at its end."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test (SQLAlchemy URL), dropped after it."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
