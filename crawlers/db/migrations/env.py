"""Alembic's environment for the state database, configured from Python.

``crawlers.db.state.alembic_config`` builds the configuration (no alembic.ini):
online, ``StateDB.upgrade`` hands over the connection to migrate, already inside
the transaction (and, on PostgreSQL, the advisory lock) that makes two workers
starting at once upgrade one after the other; given only ``sqlalchemy.url``
(developers generating a revision) it connects itself. Offline (``sql=True``)
it renders SQL for that URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from crawlers.db.models import Base
from crawlers.db.state import StateDB

config = context.config
target_metadata = Base.metadata


def _batch(dialect_name: str) -> bool:
    """SQLite alters a table by copying it: its migrations are rendered in batch mode."""
    return dialect_name == "sqlite"


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline migrations need sqlalchemy.url in the Alembic config")
    dialect_name = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_batch(dialect_name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    # only a URL (a developer's `command.revision(..., autogenerate=True)`): no lock
    # here, so operators migrate with `scrapy db upgrade` instead
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("give the Alembic config a connection or a sqlalchemy.url")
    engine = create_engine(StateDB(url).url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_server_default=True,
        render_as_batch=_batch(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
