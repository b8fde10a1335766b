"""IDs from BigQuery, paged: a table's column, or a query's first column.

- ``bigquery://project/dataset.table?column=tcg_id``: every distinct non-null value
  of the column, as strings, in order (``SELECT DISTINCT CAST(col AS STRING)``);
- ``bigquery://project?query=SELECT ...``: the first column of a read-only query
  (``SELECT`` or ``WITH``, one statement), nulls skipped, in the query's order.

Project, dataset, table and column names are checked against BigQuery's naming
rules before they are put into SQL, so a URI cannot smuggle in another statement.
A query URI is SQL by design: the check that it is one ``SELECT`` is a guard
against mistakes, not a sandbox; give the reader's credentials read-only access.

``read_ids`` is blocking (run it in a thread, or use ``read_ids_async``, which
fetches each page in a thread). Pages hold at most ``page_size`` IDs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from crawlers.warehouse.bqclient import (
    TableRef,
    check_identifier,
    close_client,
    make_client,
    short_retry,
)

if TYPE_CHECKING:
    from google.cloud import bigquery

_READ_ONLY = re.compile(r"\s*(\(\s*)*(SELECT|WITH)\b", re.IGNORECASE)


def id_query(uri: str) -> tuple[str, str]:
    """``(project, sql)`` for an ID URI; ``ValueError`` for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "bigquery":
        raise ValueError(f"not a bigquery:// URI: {uri!r}")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"column", "query"})
    if unknown:
        raise ValueError(f"{uri!r}: unknown option(s) {unknown} (known: column, query)")
    if "query" in options:
        if parts.path.strip("/") or "column" in options:
            raise ValueError("a query URI is bigquery://project?query=SELECT ...")
        project = check_identifier("project", parts.netloc)
        return project, _read_only(options["query"][-1])
    if "column" not in options:
        raise ValueError(f"{uri!r}: give ?column=NAME (with a table) or ?query=SELECT ...")
    table = TableRef.parse(parts.netloc, parts.path, uri)
    column = check_identifier("column", options["column"][-1])
    sql = (
        f"SELECT DISTINCT CAST(`{column}` AS STRING) AS id FROM {table.sql} "
        f"WHERE `{column}` IS NOT NULL ORDER BY id"
    )
    return table.project, sql


def _read_only(sql: str) -> str:
    text = sql.strip().rstrip(";").strip()
    if not _READ_ONLY.match(text) or ";" in text:
        raise ValueError("an ID query must be one SELECT (or WITH ... SELECT) statement")
    return text


def read_ids(
    uri: str,
    endpoint: str | None = None,
    page_size: int = 10_000,
    *,
    timeout_seconds: float = 60.0,
    client: bigquery.Client | None = None,
) -> Generator[list[str], None, None]:
    """Pages of IDs (lists of at most ``page_size`` strings) for ``uri``.

    ``endpoint`` points at an emulator (anonymous credentials); ``None``/empty uses
    Google with Application Default Credentials. Blocking: each page is a request.
    """
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    project, sql = id_query(uri)  # before any connection: a bad URI makes no request
    own = client is None
    bq = client if client is not None else make_client(project, endpoint or "")
    try:
        retry = short_retry(timeout_seconds)
        job = bq.query(sql, project=project, retry=retry, timeout=timeout_seconds)
        rows = job.result(page_size=page_size, retry=retry, timeout=timeout_seconds)
        for page in rows.pages:
            ids = [str(row[0]) for row in page if row[0] is not None]
            if ids:
                yield ids
    finally:
        if own:
            close_client(bq)


async def read_ids_async(
    uri: str,
    endpoint: str | None = None,
    page_size: int = 10_000,
    *,
    timeout_seconds: float = 60.0,
) -> AsyncIterator[list[str]]:
    """``read_ids`` for an event loop: every request runs in a thread."""
    pages = read_ids(uri, endpoint, page_size, timeout_seconds=timeout_seconds)
    done = object()
    try:
        while True:
            page = await asyncio.to_thread(next, pages, done)
            if page is done:
                return
            assert isinstance(page, list)
            yield page
    finally:
        await asyncio.to_thread(pages.close)
