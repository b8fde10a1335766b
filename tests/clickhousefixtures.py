"""The ClickHouse server of the tests: :class:`~crawlers.sandbox.clickhouse_server.ClickHouseServer`
with a ``hydra`` user whose password (:data:`PASSWORD`) must never show."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crawlers.sandbox.clickhouse_server import ClickHouseServer

__all__ = ["PASSWORD", "USER", "ClickHouseServer", "clickhouse", "clickhouse_server"]

USER = "hydra"
PASSWORD = "ch-Pa55word-never-shown"


def clickhouse(workdir: Path) -> ClickHouseServer:
    """A server (not started) with the tests' users."""
    return ClickHouseServer(workdir, users={USER: PASSWORD})


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One server shared by the session; each test makes its own database."""
    server = clickhouse(tmp_path_factory.mktemp("clickhouse")).start()
    yield server
    server.stop()
