"""ClickHouse sink: ``clickhouse://[user:password@]host[:port]/db.table?batch_rows=10000``.

Rows are buffered and inserted over the native protocol (clickhouse-driver, port
9000 by default, 9440 with ``secure=1``) in batches of ``batch_rows`` rows
(``HYDRA_CLICKHOUSE_BATCH_ROWS``); ``wants_flush()`` asks for a flush when the buffer
holds that many rows or its oldest row is ``flush_seconds`` old
(``HYDRA_CLICKHOUSE_FLUSH_SECONDS``), and the worker flushes before every ack and
before ``close()``, which makes one last attempt itself.

``open()`` creates the table if it is missing (the database must exist)::

    CREATE TABLE db.table (
        key String,                           -- Row.key: the same item fetched again has it
        version UInt64,                       -- the flush's start in ns + the row's place
        inserted_at DateTime DEFAULT now(),
        data String                           -- the row as JSON
    ) ENGINE = ReplacingMergeTree(version) ORDER BY key

A row inserted again (a flush retried after a lost answer, a message redelivered
after a crash) has the same key, so it counts once in ``SELECT ... FROM t FINAL``
(ClickHouse merges the copies in the background, keeping the highest version: the
latest fetch). Count with ``FINAL`` (or ``uniqExact(key)``), not a bare ``count()``.

A table that exists with other columns (made by hand for typed queries) gets the
row's fields by column name: each value is converted for its column's type
(``"12"`` for a ``UInt32``, an ISO string for a ``DateTime``, a dict as JSON text in a
``String``...), with range checks the driver does not make (it writes a date before
1970 as some date in the 22nd century) and one message per bad value. A value that
cannot be converted makes the row a :class:`Rejection`; the other rows are stored.
Fields with no column are dropped (logged once per name); columns no field fills get
their default, as do ``None`` values in non-``Nullable`` columns. Columns named
``key`` and ``version`` that no field fills get the row's key and version; rows
re-inserted count once if the table's engine deduplicates on them (a warning says
when it is not a ``ReplacingMergeTree``).

A flush that cannot reach ClickHouse (refused, reset, timed out, the server
restarting) is retried once after ``retry_seconds``; if it still fails it raises
:class:`SinkError` and keeps every row not stored for the next flush. An insert
ClickHouse refuses for its data is split in halves until the refused rows are
alone; those come back as :class:`Rejection` s. Other errors from the server (no
such table, access denied) raise :class:`SinkError` and keep the rows; the table is
looked up (and created) again by the next flush.

Options in the query: ``batch_rows``, ``flush_seconds``, ``timeout_seconds`` (15: one
connect, send or receive), ``retry_seconds`` (0.5), ``secure`` (0) and ``verify`` (1:
TLS). ``describe()`` and every log line show the URI without the password;
``uri`` holds it redacted. Every client call runs in a thread, one at a time.
Importing this module drops the tracebacks the driver attaches to its warnings
about failed connections (the one-line message stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import functools
import json
import logging
import re
import reprlib
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from scrapy.exceptions import NotConfigured

from crawlers.config import HydraConfig, redact_url
from crawlers.models.redaction import DEFAULT_REDACTOR
from crawlers.sinks.base import Rejection, Row, SinkError

try:
    from clickhouse_driver import Client  # type: ignore[import-untyped]
    from clickhouse_driver import errors as ch_errors
except ImportError as exc:  # pragma: no cover - the extra is part of dev
    raise NotConfigured(
        "clickhouse:// sinks need clickhouse-driver: pip install 'hydra-crawlers[clickhouse]'"
    ) from exc

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class _NoDriverTracebacks(logging.Filter):
    """The driver logs a traceback with every failed connect (each retry of a flush
    while the server is down); its one-line message is enough, the sink's SinkError
    says the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.ERROR:
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("clickhouse_driver.connection").addFilter(_NoDriverTracebacks())

_OPTIONS = ("batch_rows", "flush_seconds", "timeout_seconds", "retry_seconds", "secure", "verify")
#: the table the sink creates (and recognises as its own: rows as JSON)
OWN_COLUMNS = (
    ("key", "String"),
    ("version", "UInt64"),
    ("inserted_at", "DateTime"),
    ("data", "String"),
)
OWN_SCHEMA = "key String, version UInt64, inserted_at DateTime DEFAULT now(), data String"
ENGINE = "ReplacingMergeTree(version) ORDER BY key"

# server error codes (ClickHouse's ErrorCodes)
UNKNOWN_TABLE = 60
TABLE_ALREADY_EXISTS = 57
UNKNOWN_DATABASE = 81
#: the server is busy, short of memory, restarting: the same insert may pass later
TRANSIENT_CODES = frozenset(
    {3, 23, 24, 32, 33, 159, 202, 203, 209, 210, 241, 242, 252, 319, 394, 425}
)
#: the server refused the data itself: some row of the insert is at fault
DATA_CODES = frozenset({6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 349, 376})

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT_RANGES = {
    f"{prefix}Int{bits}": (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if prefix == "" else (0, (1 << bits) - 1)
    )
    for prefix in ("", "U")
    for bits in (8, 16, 32, 64)
}
_EPOCH_DATE = datetime.date(1970, 1, 1)
_LAST_DATE = _EPOCH_DATE + datetime.timedelta(days=0xFFFF)  # Date is a UInt16 of days
_LAST_DATETIME = 0xFFFFFFFF  # DateTime is a UInt32 of seconds
#: the rows of the sink's own table, as JSON (compact; NaN is not JSON)
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str, separators=(",", ":"))
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def quote_identifier(name: str) -> str:
    if _IDENTIFIER.match(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# -- values for typed columns --------------------------------------------------

Converter = Callable[[Any], Any]


def _split_args(text: str) -> list[str]:
    """The top-level, comma-separated arguments of a type (``a, Array(b), 'x,y'``)."""
    parts: list[str] = []
    depth, quoted, start, index = 0, False, 0, 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == "'":
                quoted = False
        elif char == "'":
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
        index += 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def converter(spec: str) -> Converter:
    """A function taking a Python value to what the driver writes for a column of type
    ``spec``, or raising ``TypeError``/``ValueError`` that says why it cannot."""
    name, _, rest = spec.strip().partition("(")
    args = _split_args(rest[: rest.rfind(")")]) if rest else []
    if name == "Nullable":
        inner = converter(args[0])
        return lambda value: None if value is None else inner(value)
    if name == "LowCardinality":
        return converter(args[0])
    if name == "Array":
        return functools.partial(_array, converter(args[0]))
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        return functools.partial(_int, low, high)
    if name in ("Float32", "Float64"):
        return _float
    if name == "String":
        return _string
    if name == "FixedString":
        return functools.partial(_fixed_string, int(args[0]))
    if name == "Date":
        return _date
    if name == "DateTime":
        return _datetime
    if name.startswith("Decimal"):
        if name == "Decimal":
            precision, scale = int(args[0]), int(args[1])
        else:
            precision = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38}.get(name, 38)
            scale = int(args[0])
        return functools.partial(_decimal, precision, scale)
    if name == "UUID":
        return _uuid
    if name in ("Enum8", "Enum16"):
        names: dict[str, int] = {}
        for arg in args:
            label, _, number = arg.rpartition("=")
            names[_unquote(label.strip())] = int(number)
        return functools.partial(_enum, names, {number: label for label, number in names.items()})
    return _as_is  # Tuple, Nested, aggregate states...: the driver's own rules


def type_default(spec: str) -> Any:
    """What a column of type ``spec`` holds when the row has no value for it (NULL for
    a ``Nullable``, else the type's zero); None where the sink does not know."""
    name, _, rest = spec.strip().partition("(")
    args = _split_args(rest[: rest.rfind(")")]) if rest else []
    if name == "LowCardinality":
        return type_default(args[0])
    if name == "Tuple":
        return tuple(type_default(arg) for arg in args)
    if name in ("Enum8", "Enum16"):
        numbered = [(int(arg.rpartition("=")[2]), arg.rpartition("=")[0]) for arg in args]
        return _unquote(min(numbered)[1].strip()) if numbered else None
    simple: dict[str, Any] = {
        "Array": [],
        "Float32": 0.0,
        "Float64": 0.0,
        "String": b"",
        "FixedString": b"",
        "Date": _EPOCH_DATE,
        "DateTime": 0,
        "UUID": uuid.UUID(int=0),
    }
    if name in _INT_RANGES:
        return 0
    if name.startswith("Decimal"):
        return decimal.Decimal(0)
    return simple.get(name)  # Nullable: None, i.e. NULL


def _unquote(literal: str) -> str:
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        literal = literal[1:-1]
    return re.sub(r"\\(.)", r"\1", literal)


def _as_is(value: Any) -> Any:
    return value


def _int(low: int, high: int, value: Any) -> int:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        number = int(value)  # a bool is 0 or 1
    elif isinstance(value, str):
        number = int(value.strip())
    elif isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        number = int(value)
    else:
        raise TypeError(f"{_short.repr(value)} is not an integer")
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range [{low}, {high}]")
    return number


def _float(value: Any) -> float:
    if isinstance(value, int | float | decimal.Decimal):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError(f"{_short.repr(value)} is not a number")


def _string(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if value is None:
        raise TypeError("null where a string is expected")
    if isinstance(value, Mapping | list | tuple | bool | int | float):
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
        return text.encode("utf-8")
    return str(value).encode("utf-8")


def _fixed_string(length: int, value: Any) -> bytes:
    data = _string(value)
    if len(data) > length:
        raise ValueError(f"{len(data)} bytes, more than FixedString({length}) holds")
    return data


def _date(value: Any) -> datetime.date:
    if isinstance(value, datetime.datetime):
        day = value.date()
    elif isinstance(value, datetime.date):
        day = value
    elif isinstance(value, str):
        text = value.strip()
        day = (
            datetime.date.fromisoformat(text)
            if len(text) == 10
            else datetime.datetime.fromisoformat(text).date()
        )
    else:
        raise TypeError(f"{_short.repr(value)} is not a date")
    if not _EPOCH_DATE <= day <= _LAST_DATE:
        raise ValueError(f"{day} is outside the range of Date ({_EPOCH_DATE} .. {_LAST_DATE})")
    return day


def _datetime(value: Any) -> int:
    """Seconds since the epoch (the driver writes ints as they are); naive is UTC."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.strip())
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        seconds = int(value.timestamp())
    elif isinstance(value, datetime.date):
        seconds = int(datetime.datetime.combine(value, datetime.time(), datetime.UTC).timestamp())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = int(value)
    else:
        raise TypeError(f"{_short.repr(value)} is not a date and time")
    if not 0 <= seconds <= _LAST_DATETIME:
        raise ValueError(f"{_short.repr(value)} is outside the range of DateTime (1970 .. 2106)")
    return seconds


def _decimal(precision: int, scale: int, value: Any) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | decimal.Decimal):
        raise TypeError(f"{_short.repr(value)} is not a number")
    number = decimal.Decimal(value.strip() if isinstance(value, str) else str(value))
    if not number.is_finite():
        raise ValueError(f"{number} is not finite")
    number = number.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_EVEN)
    if abs(number) >= decimal.Decimal(10) ** (precision - scale):
        raise ValueError(f"{number} does not fit Decimal({precision}, {scale})")
    return number


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return uuid.UUID(value.strip())
    raise TypeError(f"{_short.repr(value)} is not a UUID")


def _enum(names: dict[str, int], labels: dict[int, str], value: Any) -> str:
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in labels:
        return labels[value]
    raise ValueError(f"{_short.repr(value)} is not one of {sorted(names)}")


def _array(inner: Converter, value: Any) -> list[Any]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not hasattr(value, "__iter__"):
        raise TypeError(f"{_short.repr(value)} is not a list")
    return [inner(element) for element in value]


# -- the table as the sink sees it ---------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    convert: Converter
    #: the value written for a row with no value (or None) for the column
    default: Any = None
    #: how the row's version fills it when no field does: "ns", "s" or "" (not at all)
    version_unit: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class TableSchema:
    """``own``: the sink's own table (key, version, data as JSON); else ``columns``,
    filled from the row's fields by name."""

    own: bool
    columns: tuple[Column, ...]
    engine: str
    names: frozenset[str] = frozenset()


def _column(name: str, spec: str) -> Column:
    try:
        convert, default = converter(spec), type_default(spec)
    except (ValueError, IndexError):  # a type this parser misreads: the driver's rules
        convert, default = _as_is, None
    return Column(name, spec, convert, default, _version_unit(name, spec))


def _version_unit(name: str, spec: str) -> str:
    if name != "version":
        return ""
    if spec in ("UInt64", "Int64"):
        return "ns"
    if spec in ("UInt32", "DateTime"):
        return "s"
    return ""


# -- buffered rows -----------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Part:
    """Rows ready to insert: ``columns[i]`` holds column ``names[i]`` of every row."""

    rows: list[Row]
    names: list[str]
    columns: list[list[Any]]

    def halves(self) -> tuple[_Part, _Part]:
        middle = len(self.rows) // 2
        return (
            _Part(self.rows[:middle], self.names, [c[:middle] for c in self.columns]),
            _Part(self.rows[middle:], self.names, [c[middle:] for c in self.columns]),
        )


class _Refused(Exception):
    """A row the sink will never store: its message is the rejection's."""


@dataclasses.dataclass(slots=True)
class _Outcome:
    """What one flush's thread did: rows not stored (kept), rejected, and why it failed."""

    kept: list[Row] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    stored: int = 0
    error: str = ""


class ClickHouseSink:
    """Inserts rows into one ClickHouse table in batches; see the module docstring."""

    def __init__(
        self,
        uri: str,
        *,
        host: str,
        port: int,
        database: str,
        table: str,
        user: str = "",
        password: str = "",
        secure: bool = False,
        verify: bool = True,
        batch_rows: int = 10_000,
        flush_seconds: float = 1.0,
        timeout_seconds: float = 15.0,
        retry_seconds: float = 0.5,
    ) -> None:
        if batch_rows < 1 or flush_seconds < 0 or timeout_seconds <= 0 or retry_seconds < 0:
            raise ValueError(
                f"{redact_url(uri)}: batch_rows >= 1, flush_seconds >= 0, timeout_seconds > 0 "
                "and retry_seconds >= 0 are required"
            )
        self.uri = redact_url(uri)
        self.host = host
        self.port = port
        self.database = database
        self.table = table
        self.user = user
        self._password = password
        self.secure = secure
        self.verify = verify
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        self.qualified = f"{quote_identifier(database)}.{quote_identifier(table)}"
        self.schema: TableSchema | None = None
        self._client: Any = None
        self._pending: list[Row] = []
        self._pending_since = 0.0
        self._rejected: list[Rejection] = []
        self._last_version = 0
        self._unknown_fields: set[str] = set()
        self._lock = asyncio.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> ClickHouseSink:
        config = HydraConfig.from_crawler(crawler)
        return cls.from_uri(
            uri,
            batch_rows=config.clickhouse_batch_rows,
            flush_seconds=config.clickhouse_flush_seconds,
        )

    @classmethod
    def from_uri(
        cls, uri: str, *, batch_rows: int = 10_000, flush_seconds: float = 1.0
    ) -> ClickHouseSink:
        """Options in the URI's query override ``batch_rows``/``flush_seconds``."""
        shown = redact_url(uri)
        parts = urlsplit(uri)
        if parts.scheme != "clickhouse" or not parts.hostname:
            raise ValueError(f"{shown}: expected clickhouse://[user:password@]host[:port]/db.table")
        database, dot, table = unquote(parts.path.lstrip("/")).partition(".")
        if not dot or not database or not table:
            raise ValueError(f"{shown}: the path must be /database.table")
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"{shown}: unknown option(s) {unknown} (known: {list(_OPTIONS)})")
        secure = _flag(options.get("secure", "0"), "secure", shown)
        try:
            port = parts.port or (9440 if secure else 9000)
        except ValueError as exc:
            raise ValueError(f"{shown}: {exc}") from None
        return cls(
            uri,
            host=parts.hostname,
            port=port,
            database=database,
            table=table,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            secure=secure,
            verify=_flag(options.get("verify", "1"), "verify", shown),
            batch_rows=int(options.get("batch_rows", batch_rows)),
            flush_seconds=float(options.get("flush_seconds", flush_seconds)),
            timeout_seconds=float(options.get("timeout_seconds", 15.0)),
            retry_seconds=float(options.get("retry_seconds", 0.5)),
        )

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"clickhouse://{user}{host}:{self.port}/{self.database}.{self.table}"

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    # -- open ---------------------------------------------------------------

    async def open(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            self._ready()
        except Exception as exc:
            self._disconnect()
            if isinstance(exc, SinkError):
                raise
            raise SinkError(f"{self.describe()}: cannot open the table: {_brief(exc)}") from exc

    def _connect(self) -> Any:
        if self._client is None:
            self._client = Client(
                host=self.host,
                port=self.port,
                database=self.database,
                user=self.user or "default",
                password=self._password,
                secure=self.secure,
                verify=self.verify,
                connect_timeout=self.timeout_seconds,
                send_receive_timeout=self.timeout_seconds,
                sync_request_timeout=min(self.timeout_seconds, 5.0),
                client_name="hydra",
            )
        return self._client

    def _ready(self) -> TableSchema:
        """In a thread: the connection and the table's schema (the table created if
        missing); raises the driver's errors, or SinkError with advice."""
        client = self._connect()
        if self.schema is not None:
            return self.schema
        try:
            described = client.execute(f"DESCRIBE TABLE {self.qualified}")
        except ch_errors.ServerException as exc:
            if exc.code == UNKNOWN_DATABASE:
                raise self._no_database() from None
            if exc.code != UNKNOWN_TABLE:
                raise
            self._create(client)
            described = client.execute(f"DESCRIBE TABLE {self.qualified}")
        rows = client.execute(
            "SELECT engine FROM system.tables WHERE database = %(db)s AND name = %(table)s",
            {"db": self.database, "table": self.table},
        )
        engine = str(rows[0][0]) if rows else ""
        columns = tuple(
            _column(str(name), str(spec))
            for name, spec, default_kind, *_ in described
            if default_kind not in ("MATERIALIZED", "ALIAS")
        )
        own = tuple((c.name, c.type) for c in columns) == OWN_COLUMNS
        schema = TableSchema(own, columns, engine, frozenset(c.name for c in columns))
        if not engine.endswith("ReplacingMergeTree"):
            logger.warning(
                "ClickHouse table %s has engine %s, not ReplacingMergeTree: rows inserted "
                "again (a retried flush, a redelivered message) are stored twice",
                self.describe(),
                engine or "(unknown)",
            )
        logger.info(
            "ClickHouse sink %s open (%s, %s)",
            self.describe(),
            engine,
            "rows as JSON by key"
            if own
            else f"typed: {len(columns)} columns filled from the rows' fields",
        )
        self.schema = schema
        return schema

    def _create(self, client: Any) -> None:
        try:
            client.execute(
                f"CREATE TABLE IF NOT EXISTS {self.qualified} ({OWN_SCHEMA}) ENGINE = {ENGINE}"
            )
        except ch_errors.ServerException as exc:
            if exc.code == UNKNOWN_DATABASE:
                raise self._no_database() from None
            if exc.code != TABLE_ALREADY_EXISTS:  # another worker's CREATE won the race
                raise
        logger.info("Created ClickHouse table %s (%s)", self.describe(), ENGINE)

    def _no_database(self) -> SinkError:
        return SinkError(
            f"ClickHouse database {self.database} does not exist on {self.host}:{self.port}: "
            f"create it first (CREATE DATABASE {quote_identifier(self.database)}); the sink "
            "creates only its table"
        )

    # -- write --------------------------------------------------------------

    async def write(self, rows: Sequence[Row]) -> None:
        """Buffer the rows; they get their version when a flush sends them."""
        if rows:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(rows)

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
            since = self._pending_since
            work = asyncio.ensure_future(asyncio.to_thread(self._send, pending))
            try:
                # a cancelled flush waits for its thread, then keeps what it did not store
                outcome = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                if work.done() and not work.cancelled() and work.exception() is None:
                    done = work.result()
                    self._keep(done.kept, rejected + done.rejected, since)
                else:
                    self._keep(pending, rejected, since)
                raise
            except BaseException:
                self._keep(pending, rejected, since)
                raise
            if outcome.error:
                self._keep(outcome.kept, rejected + outcome.rejected, since)
                raise SinkError(outcome.error)
            return rejected + outcome.rejected

    def _keep(self, rows: list[Row], rejected: list[Rejection], since: float) -> None:
        """Rows not stored go back in front of the buffer (its age is theirs again);
        rejections wait for the next flush."""
        if rows:
            self._pending_since = since
            self._pending = rows + self._pending
        self._rejected = rejected + self._rejected

    def _send(self, pending: list[Row]) -> _Outcome:
        """In a thread: insert every row, batch by batch; never raises.

        Each row's version is the flush's start in ns plus its place in the buffer:
        rows written later (in this flush, or in any later one, kept rows included)
        have higher versions, so the latest write of a key wins under FINAL."""
        outcome = _Outcome()
        base = max(time.time_ns(), self._last_version + 1)
        self._last_version = base + len(pending) - 1
        try:
            schema = self._ready()
        except Exception as exc:
            self._after_failure(exc)
            outcome.kept = pending
            outcome.error = (
                f"{self.describe()}: cannot reach the table, {len(pending)} rows kept for "
                f"the next flush: {_brief(exc)}"
            )
            return outcome
        for start in range(0, len(pending), self.batch_rows):
            batch = pending[start : start + self.batch_rows]
            if schema.own:
                part = self._own_part(batch, base + start, outcome)
            else:
                part = self._typed_part(schema, batch, base + start, outcome)
            unsent, error = self._insert_isolating(part, outcome)
            if error is not None:
                self._after_failure(error)
                outcome.kept = unsent + pending[start + self.batch_rows :]
                outcome.error = (
                    f"{self.describe()}: insert failed, {len(outcome.kept)} rows kept for the "
                    f"next flush ({outcome.stored} stored by this flush): {_brief(error)}"
                )
                return outcome
        return outcome

    def _after_failure(self, exc: BaseException) -> None:
        """A server error not about the data (no such table, no access): look the table
        up again next time, it may have been dropped or altered."""
        if isinstance(exc, ch_errors.ServerException) and _classify(exc) != "transient":
            self.schema = None

    def _own_part(self, batch: list[Row], first_version: int, outcome: _Outcome) -> _Part:
        """Rows for the sink's own table: key, version, the data as JSON."""
        encode = _JSON.encode
        try:  # the common case, as fast as a plain loop
            texts = [encode(row.data) for row in batch]
            rows = batch
        except (TypeError, ValueError, RecursionError):
            rows, texts = [], []
            for row in batch:
                try:
                    texts.append(encode(row.data))
                except (TypeError, ValueError, RecursionError) as exc:
                    outcome.rejected.append(Rejection(row, f"not serialisable as JSON: {exc}"))
                    continue
                rows.append(row)
        keys = [row.key for row in rows]
        versions = list(range(first_version, first_version + len(rows)))
        return _Part(rows, ["key", "version", "data"], [keys, versions, texts])

    def _typed_part(
        self, schema: TableSchema, batch: list[Row], first_version: int, outcome: _Outcome
    ) -> _Part:
        """Rows for a table of the user's: the columns any row has a value for."""
        rows: list[Row] = []
        converted: list[dict[str, Any]] = []
        for version, row in enumerate(batch, first_version):
            try:
                converted.append(self._cells(schema, row, version))
            except _Refused as refused:
                outcome.rejected.append(Rejection(row, str(refused)))
                continue
            rows.append(row)
        present: set[str] = set()
        for cells in converted:
            present.update(cells)
        columns = [column for column in schema.columns if column.name in present]
        return _Part(
            rows,
            [column.name for column in columns],
            [[cells.get(column.name, column.default) for cells in converted] for column in columns],
        )

    def _cells(self, schema: TableSchema, row: Row, version: int) -> dict[str, Any]:
        """A row's values by column, converted for their types; raises _Refused."""
        data = row.data
        cells: dict[str, Any] = {}
        for column in schema.columns:
            name = column.name
            if name in data:
                value = data[name]
            elif name == "key":
                value = row.key
            elif column.version_unit:
                value = version if column.version_unit == "ns" else version // 10**9
            else:
                continue
            try:
                cells[name] = column.default if value is None else column.convert(value)
            except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
                raise _Refused(
                    f"column {name} ({column.type}): {_short.repr(value)}: {exc}"
                ) from None
        extra = data.keys() - schema.names - self._unknown_fields
        if extra:
            self._unknown_fields.update(extra)
            logger.warning(
                "ClickHouse table %s has no column for field(s) %s: they are not stored",
                self.describe(),
                ", ".join(sorted(map(str, extra))),
            )
        if not cells:
            raise _Refused(
                f"none of the row's fields is a column of {self.database}.{self.table} "
                f"(columns: {', '.join(column.name for column in schema.columns)})"
            )
        return cells

    def _insert_isolating(
        self, todo: _Part, outcome: _Outcome
    ) -> tuple[list[Row], BaseException | None]:
        """Insert ``todo``; an insert refused for its data is split until the rows at
        fault are alone (rejected). Returns the rows not stored and the error that
        stopped it (None: all stored or rejected)."""
        stack = [todo] if todo.rows else []
        while stack:
            part = stack.pop()
            try:
                self._insert_retrying(part)
            except Exception as exc:
                if _classify(exc) != "data":
                    unsent = [row for chunk in [part, *reversed(stack)] for row in chunk.rows]
                    return unsent, exc
                if len(part.rows) == 1:
                    outcome.rejected.append(
                        Rejection(part.rows[0], f"ClickHouse refused the row: {_brief(exc)}")
                    )
                    continue
                first, second = part.halves()
                stack += [second, first]  # the first half next
                continue
            outcome.stored += len(part.rows)
        return [], None

    def _insert_retrying(self, part: _Part) -> None:
        for attempt in (1, 2):
            try:
                self._insert(part)
                return
            except Exception as exc:
                if attempt == 2 or _classify(exc) != "transient":
                    raise
                logger.info(
                    "ClickHouse insert into %s failed (%s); retrying in %.1f s",
                    self.describe(),
                    _brief(exc),
                    self.retry_seconds,
                )
                time.sleep(self.retry_seconds)

    def _insert(self, part: _Part) -> None:
        client = self._connect()
        names = ", ".join(map(quote_identifier, part.names))
        # the driver's lists are its own: it writes converted values into them
        columns = [list(column) for column in part.columns]
        client.execute(f"INSERT INTO {self.qualified} ({names}) VALUES", columns, columnar=True)

    # -- close --------------------------------------------------------------

    async def close(self) -> None:
        """One last flush of rows still buffered (their messages were not acknowledged,
        so whatever it cannot store is fetched again), then disconnect."""
        if self._pending or self._rejected:
            try:
                rejected = await self.flush()
            except SinkError as exc:
                logger.warning(
                    "%d rows not stored in %s at close (%s): their messages were not "
                    "acknowledged and will be fetched again",
                    len(self._pending),
                    self.describe(),
                    exc,
                )
                rejected = []
            if rejected:
                logger.warning(
                    "%d rows refused by %s at close, e.g. %s: their messages were not "
                    "acknowledged; they are refused again when fetched again",
                    len(rejected),
                    self.describe(),
                    rejected[0].error,
                )
            self._pending, self._rejected = [], []
        async with self._lock:
            await asyncio.to_thread(self._disconnect)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        self.schema = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()


def _flag(value: str, name: str, shown: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{shown}: {name}={value!r} is not a flag (1/0)")


def _classify(exc: BaseException) -> str:
    """``transient`` (try again later), ``data`` (some row is at fault) or ``fatal``."""
    if isinstance(exc, ch_errors.ServerException):
        if exc.code in TRANSIENT_CODES:
            return "transient"
        return "data" if exc.code in DATA_CODES else "fatal"
    if isinstance(
        exc,
        ch_errors.NetworkError
        | ch_errors.SocketTimeoutError
        | ch_errors.UnexpectedPacketFromServerError
        | ch_errors.UnknownPacketFromServerError
        | ch_errors.PartiallyConsumedQueryError
        | OSError
        | EOFError,
    ):
        return "transient"
    # the driver refusing a value while it writes the block (nothing is inserted)
    if isinstance(
        exc,
        ch_errors.TypeMismatchError
        | ch_errors.TooLargeStringSize
        | ch_errors.CannotParseUuidError
        | ch_errors.CannotParseDomainError
        | ch_errors.LogicalError
        | TypeError
        | ValueError
        | AttributeError
        | ArithmeticError
        | struct.error,
    ):
        return "data"
    return "fatal"


def _brief(exc: BaseException) -> str:
    """An exception in one line, short: a server's message without its stack trace."""
    text = str(exc)
    cut = text.find("Stack trace")
    if cut >= 0:
        text = text[:cut]
    text = " ".join(f"{type(exc).__name__}: {text}".split()).rstrip(". ")
    text = DEFAULT_REDACTOR.text(text)
    return text if len(text) <= 500 else text[:497] + "..."
