"""BigQuery streaming sink: ``bigquery://project/dataset.table?batch_rows=500&flush_seconds=1.0``.

Rows are buffered and streamed with ``tabledata.insertAll`` (the client's
``insert_rows_json``) in requests of at most ``batch_rows`` rows and
``batch_bytes`` bytes; each row's ``insertId`` is its :attr:`Row.key` (for prices,
``run_id/id``), so a row sent again after a crash or a failed flush is stored once
(BigQuery dedups on a best-effort basis, for about a minute).

``open()`` creates the table if it is missing, one column per field of the item
class named by ``schema`` (default :class:`crawlers.items.PriceItem`); the dataset
must exist. A flush that cannot reach BigQuery, or that BigQuery refuses as a
whole, raises :class:`SinkError` and keeps every row not stored for the next
flush; rows BigQuery refuses one by one (``insertErrors``: a wrong type, an
unknown field) come back as :class:`Rejection` with BigQuery's message, while the
other rows of the same request are stored (``skipInvalidRows``).

Options in the query: ``batch_rows`` (500), ``batch_bytes`` (5 MiB; BigQuery takes
10 MB a request), ``flush_seconds`` (1.0: the age of the buffer that asks for a
flush), ``timeout_seconds`` (15: how long one call, with the client's own retries,
may take) and ``schema`` (an item class path). ``HYDRA_BIGQUERY_ENDPOINT`` points
the client at an emulator with anonymous credentials; otherwise it uses
Application Default Credentials. Every client call runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import decimal
import hashlib
import json
import logging
import math
import time
import types
import typing
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from scrapy.exceptions import NotConfigured
from scrapy.utils.misc import load_object

from crawlers.config import HydraConfig, redact_url
from crawlers.items import PriceItem
from crawlers.sinks.base import Rejection, Row, SinkError
from crawlers.warehouse.bqclient import (
    MAX_INSERT_ID,
    TableRef,
    close_client,
    make_client,
    short_retry,
)

try:
    from google.api_core import exceptions as google_exceptions
    from google.cloud import bigquery
except ImportError as exc:  # pragma: no cover - the extra is part of dev
    raise NotConfigured(
        "bigquery:// sinks need google-cloud-bigquery: pip install 'hydra-crawlers[bigquery]'"
    ) from exc

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: row-level reasons that say "not stored, through no fault of this row": sent again
TRANSIENT_REASONS = frozenset({"stopped", "timeout", "backendError", "internalError"})

_OPTIONS = ("batch_rows", "batch_bytes", "flush_seconds", "timeout_seconds", "schema")


def bigquery_type(annotation: Any) -> str:
    """The BigQuery column type for a field's type annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return bigquery_type(args[0])
        return "JSON"
    if origin is typing.Annotated:
        return bigquery_type(typing.get_args(annotation)[0])
    simple: list[tuple[type, str]] = [
        (bool, "BOOL"),  # before int: a bool is an int
        (int, "INT64"),
        (float, "FLOAT64"),
        (str, "STRING"),
        (bytes, "BYTES"),
        (decimal.Decimal, "NUMERIC"),
        (datetime.datetime, "TIMESTAMP"),  # before date: a datetime is a date
        (datetime.date, "DATE"),
        (datetime.time, "TIME"),
    ]
    if isinstance(annotation, type):
        for python_type, name in simple:
            if issubclass(annotation, python_type):
                return name
    return "JSON"  # Any, dict, list, nested items: stored as JSON


def item_columns(item_class: type) -> dict[str, str]:
    """Column name -> BigQuery type: one column per field of a dataclass or pydantic model."""
    if dataclasses.is_dataclass(item_class):
        hints = typing.get_type_hints(item_class, include_extras=True)
        return {f.name: bigquery_type(hints[f.name]) for f in dataclasses.fields(item_class)}
    model_fields = getattr(item_class, "model_fields", None)
    if isinstance(model_fields, Mapping):
        return {name: bigquery_type(info.annotation) for name, info in model_fields.items()}
    raise ValueError(
        f"schema {item_class.__module__}.{item_class.__qualname__}: not a dataclass or "
        "pydantic model, so its fields have no types to make columns of"
    )


def insert_id(key: str) -> str:
    """A row key as an ``insertId`` (BigQuery takes at most 128 characters)."""
    if len(key) <= MAX_INSERT_ID:
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclasses.dataclass(slots=True)
class _Pending:
    row: Row
    payload: dict[str, Any]
    insert_id: str
    size: int


@dataclasses.dataclass(slots=True)
class _Outcome:
    """What one flush's thread did: rows not stored (kept), rejected, and why it failed."""

    kept: list[_Pending] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    stored: int = 0
    error: str = ""


class BigQuerySink:
    """Streams rows into one BigQuery table; see the module docstring."""

    def __init__(
        self,
        uri: str,
        table: TableRef,
        *,
        endpoint: str = "",
        item_class: type = PriceItem,
        batch_rows: int = 500,
        batch_bytes: int = 5 << 20,
        flush_seconds: float = 1.0,
        timeout_seconds: float = 15.0,
    ) -> None:
        if batch_rows < 1 or batch_bytes < 1024 or flush_seconds < 0 or timeout_seconds <= 0:
            raise ValueError(
                f"{table.uri}: batch_rows >= 1, batch_bytes >= 1024, flush_seconds >= 0 "
                "and timeout_seconds > 0 are required"
            )
        self.uri = uri
        self.table = table
        self.endpoint = endpoint
        self.item_class = item_class
        self.columns = item_columns(item_class)
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.flush_seconds = flush_seconds
        self.timeout_seconds = timeout_seconds
        self._client: bigquery.Client | None = None
        self._pending: list[_Pending] = []
        self._pending_since = 0.0
        self._rejected: list[Rejection] = []
        self._lock = asyncio.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> BigQuerySink:
        return cls.from_uri(uri, endpoint=HydraConfig.from_crawler(crawler).bigquery_endpoint)

    @classmethod
    def from_uri(cls, uri: str, endpoint: str = "") -> BigQuerySink:
        parts = urlsplit(uri)
        table = TableRef.parse(parts.netloc, parts.path, uri)
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"{table.uri}: unknown option(s) {unknown} (known: {list(_OPTIONS)})")
        item_class: type = PriceItem
        if "schema" in options:
            loaded = load_object(options["schema"])
            if not isinstance(loaded, type):
                raise ValueError(f"{table.uri}: schema={options['schema']!r} is not a class")
            item_class = loaded
        return cls(
            uri,
            table,
            endpoint=endpoint,
            item_class=item_class,
            batch_rows=int(options.get("batch_rows", 500)),
            batch_bytes=int(options.get("batch_bytes", 5 << 20)),
            flush_seconds=float(options.get("flush_seconds", 1.0)),
            timeout_seconds=float(options.get("timeout_seconds", 15.0)),
        )

    @property
    def schema(self) -> list[bigquery.SchemaField]:
        return [bigquery.SchemaField(name, kind) for name, kind in self.columns.items()]

    # -- open ---------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _get_or_create(self, client: bigquery.Client, retry: Any, timeout: float) -> Any:
        """The table, created if missing. Workers starting together race to create it:
        a create that fails (a conflict, a concurrent commit) is followed by another
        look, since the other worker's table is as good as ours."""
        for attempt in range(3):
            try:
                return client.get_table(self.table.path, retry=retry, timeout=timeout)
            except google_exceptions.NotFound:
                self._check_dataset(client)
            try:
                table = client.create_table(
                    bigquery.Table(self.table.path, schema=self.schema),
                    exists_ok=True,
                    retry=retry,
                    timeout=timeout,
                )
            except (google_exceptions.Conflict, google_exceptions.BadRequest):
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
                continue
            logger.info(
                "Created BigQuery table %s (%d columns)", self.describe(), len(self.columns)
            )
            return table
        raise AssertionError("unreachable")

    def _open(self) -> None:
        client = self._client or make_client(self.table.project, self.endpoint)
        retry, timeout = short_retry(self.timeout_seconds), self.timeout_seconds
        where = self.describe()
        try:
            table = self._get_or_create(client, retry, timeout)
        except SinkError:
            close_client(client)
            raise
        except Exception as exc:
            close_client(client)
            raise SinkError(f"{where}: cannot open the table: {_brief(exc)}") from exc
        present = {field.name for field in table.schema}
        missing = [name for name in self.columns if name not in present]
        if missing:
            close_client(client)
            raise SinkError(
                f"{where} exists without column(s) {', '.join(missing)} of "
                f"{self.item_class.__qualname__}: add them, or name another table"
            )
        self._client = client
        logger.info(
            "BigQuery sink %s open (%s)",
            where,
            f"endpoint {redact_url(self.endpoint)}"
            if self.endpoint
            else "Google, default credentials",
        )

    def _check_dataset(self, client: bigquery.Client) -> None:
        dataset = f"{self.table.project}.{self.table.dataset}"
        try:
            client.get_dataset(
                dataset, retry=short_retry(self.timeout_seconds), timeout=self.timeout_seconds
            )
        except google_exceptions.NotFound:
            raise SinkError(
                f"BigQuery dataset {dataset} does not exist: create it first (e.g. `bq mk "
                f"--dataset {self.table.project}:{self.table.dataset}`); the sink creates "
                "only its table"
            ) from None

    # -- write --------------------------------------------------------------

    async def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            try:
                payload: dict[str, Any] = {}
                size = 2  # the request's bytes for this row: {"json": {...}}, ASCII-escaped
                for name, value in row.data.items():
                    cell = payload[name] = self._cell(name, value)
                    size += len(name) + 4 + _json_size(cell)
            except (TypeError, ValueError, RecursionError) as exc:
                self._rejected.append(Rejection(row, f"not serialisable as JSON: {exc}"))
                continue
            if size > self.batch_bytes:
                self._rejected.append(
                    Rejection(row, f"row of {size} bytes exceeds batch_bytes={self.batch_bytes}")
                )
                continue
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(_Pending(row, payload, insert_id(row.key), size))

    def _cell(self, name: str, value: Any) -> Any:
        """A value as insertAll takes it for its column's type: JSON-native, finite."""
        if value is None:
            return None
        if self.columns.get(name) == "JSON":
            return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
        if type(value) in _NATIVE or isinstance(value, str | bool | int):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        if isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, Mapping | list | tuple):
            return value  # not for this column: BigQuery's rejection says why
        return str(value)

    def wants_flush(self) -> bool:
        if not self._pending:
            return False
        return (
            len(self._pending) >= self.batch_rows
            or time.monotonic() - self._pending_since >= self.flush_seconds
        )

    # -- flush --------------------------------------------------------------

    async def flush(self) -> list[Rejection]:
        async with self._lock:
            rejected, self._rejected = self._rejected, []
            if not self._pending:
                return rejected
            pending, self._pending = self._pending, []
            work = asyncio.ensure_future(asyncio.to_thread(self._send, pending))
            try:
                # a cancelled flush waits for its thread, then keeps what it did not store
                outcome = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                if work.done() and not work.cancelled() and work.exception() is None:
                    done = work.result()
                    self._keep(done.kept, rejected + done.rejected)
                else:
                    self._keep(pending, rejected)
                raise
            except BaseException:
                self._keep(pending, rejected)
                raise
            if outcome.error:
                self._keep(outcome.kept, rejected + outcome.rejected)
                raise SinkError(outcome.error)
            return rejected + outcome.rejected

    def _keep(self, rows: list[_Pending], rejected: list[Rejection]) -> None:
        """Rows not stored go back in front of the buffer; rejections wait for the next flush."""
        if rows:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending = rows + self._pending
        self._rejected = rejected + self._rejected

    def _send(self, pending: list[_Pending]) -> _Outcome:
        """In a thread: insert every row, request by request; never raises."""
        outcome = _Outcome()
        try:
            if self._client is None:
                self._client = make_client(self.table.project, self.endpoint)
            client = self._client
        except Exception as exc:
            outcome.kept, outcome.error = pending, f"{self.describe()}: no client: {_brief(exc)}"
            return outcome
        retry = short_retry(self.timeout_seconds)
        chunks = self._chunks(pending)
        for number, chunk in enumerate(chunks):
            todo = chunk
            for attempt in (1, 2):
                try:
                    errors = client.insert_rows_json(
                        self.table.path,
                        [item.payload for item in todo],
                        row_ids=[item.insert_id for item in todo],
                        skip_invalid_rows=True,
                        retry=retry,
                        timeout=self.timeout_seconds,
                    )
                except Exception as exc:
                    outcome.kept += todo + [
                        item for later in chunks[number + 1 :] for item in later
                    ]
                    outcome.error = (
                        f"{self.describe()}: insert of {len(todo)} rows failed, "
                        f"{len(outcome.kept)} kept for the next flush: {_brief(exc)}"
                    )
                    return outcome
                again = self._sort_errors(todo, errors, outcome)
                outcome.stored += len(todo) - len(errors)
                if not again:
                    break
                if attempt == 2:
                    outcome.kept += again
                    outcome.error = (
                        f"{self.describe()}: {len(again)} rows not stored (BigQuery: "
                        "stopped or timed out), kept for the next flush"
                    )
                todo = again
        return outcome

    def _sort_errors(
        self, todo: list[_Pending], errors: Sequence[Mapping[str, Any]], outcome: _Outcome
    ) -> list[_Pending]:
        """Rejections into ``outcome``; return the rows to send again."""
        again: list[_Pending] = []
        for entry in errors:
            item = todo[int(entry["index"])]
            row_errors: list[Mapping[str, Any]] = list(entry.get("errors") or [])
            reasons = {str(error.get("reason", "")) for error in row_errors}
            if reasons and reasons <= TRANSIENT_REASONS:
                again.append(item)
            else:
                outcome.rejected.append(Rejection(item.row, _row_error(row_errors)))
        return again

    def _chunks(self, pending: list[_Pending]) -> list[list[_Pending]]:
        chunks: list[list[_Pending]] = []
        current: list[_Pending] = []
        size = 0
        for item in pending:
            if current and (len(current) >= self.batch_rows or size + item.size > self.batch_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += item.size + 1
        if current:
            chunks.append(current)
        return chunks

    # -- close --------------------------------------------------------------

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(close_client, client)

    def describe(self) -> str:
        return self.table.uri

    @property
    def pending_rows(self) -> int:
        return len(self._pending)


_NATIVE = (str, int, bool)


def _json_size(cell: Any) -> int:
    """Bytes of ``cell`` in the client's request body (``json.dumps``, ASCII-escaped);
    raises for what that cannot encode (NaN in a nested value, a set...)."""
    if type(cell) is str:
        return len(encode_basestring_ascii(cell))
    if cell is None or type(cell) is bool:
        return 5
    if type(cell) is int or type(cell) is float:
        return len(repr(cell))
    return len(json.dumps(cell, allow_nan=False))


def _row_error(errors: Sequence[Mapping[str, Any]]) -> str:
    """BigQuery's words for a rejected row: ``location: message (reason)``, joined."""
    parts = []
    for error in errors:
        message = str(error.get("message") or error.get("reason") or "rejected")
        location = error.get("location")
        reason = error.get("reason")
        text = f"{location}: {message}" if location else message
        parts.append(f"{text} ({reason})" if reason else text)
    return "BigQuery: " + "; ".join(parts or ["row rejected"])


def _brief(exc: BaseException) -> str:
    """An exception in one line, short (a RetryError carries its last cause)."""
    cause = getattr(exc, "cause", None)
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(cause, BaseException) and str(cause) not in text:
        text += f" (last: {type(cause).__name__}: {cause})"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."
