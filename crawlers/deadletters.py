"""Where dead letters live, and how an operator takes them out without losing new ones.

Workers keep appending entries while an operator reads and removes them
(``scrapy deadletter``): to a Redis list, or in embedded mode to a JSON-lines
file. So an entry is removed by its exact stored bytes, never by index: an
index read a moment ago points elsewhere once another operator removed an
entry, while the bytes name exactly the entry that was shown. Entries that do
not parse are kept as they are (visible, purgeable), never dropped silently.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
from pydantic import ValidationError
from scrapy.utils.misc import load_object

from crawlers.config import HydraConfig, project_path
from crawlers.models.deadletter import DeadLetterEntry
from crawlers.models.redaction import DEFAULT_REDACTOR, redact_url
from crawlers.models.validation import validation_error_text
from crawlers.queues.memory import deadletter_lock

#: id prefixes are at least this long; a shorter all-digit token is a position
MIN_ID_PREFIX = 8
#: the id prefix `scrapy deadletter list` shows
SHORT_ID = 12
#: reasons whose payload is an item row, not a queue message: never replayed
ROW_REASONS = frozenset({"item_error", "sink_rejected"})

# KEYS: dead-letter list, queue. ARGV: stored entry, payload, keep (1: push only)
# -> 1 pushed, 0 the entry is gone (another operator took it), -1 queue is not a list.
# The type is checked first: a failing RPUSH after LREM would lose the entry, since
# a script's earlier writes stay when a later command fails.
_REQUEUE = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'list' and kind ~= 'none' then return -1 end
if ARGV[3] ~= '1' and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StoredEntry:
    """One stored dead letter: its exact bytes (the handle for removal), its 1-based
    position when read, and the entry if the bytes parse (else ``problem`` says why)."""

    position: int
    raw: bytes
    entry: DeadLetterEntry | None
    problem: str = ""

    @classmethod
    def parse(cls, position: int, raw: bytes, *, last: bool = False) -> StoredEntry:
        try:
            return cls(position, raw, DeadLetterEntry.model_validate_json(raw))
        except ValidationError as exc:
            if last:
                return cls(position, raw, None, "incomplete last line (a writer was killed?)")
            return cls(position, raw, None, f"not a dead-letter entry: {_error_text(exc)}")

    @property
    def id(self) -> str:
        return self.entry.id if self.entry is not None else ""

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Filters:
    """Entry must match every given field (any of its values); empty matches all.
    An unreadable entry matches only the empty filter: its fields are unknown."""

    reasons: Collection[str] = ()
    sources: Collection[str] = ()
    kinds: Collection[str] = ()

    def __bool__(self) -> bool:
        return bool(self.reasons or self.sources or self.kinds)

    def match(self, stored: StoredEntry) -> bool:
        entry = stored.entry
        if entry is None:
            return not self
        return (
            (not self.reasons or entry.reason in self.reasons)
            and (not self.sources or entry.source in self.sources)
            and (not self.kinds or entry.kind in self.kinds)
        )


def is_position(token: str) -> bool:
    return token.isascii() and token.isdigit() and len(token) < MIN_ID_PREFIX


def find(entries: Sequence[StoredEntry], token: str) -> StoredEntry:
    """The entry a token names: a position (``3``) or an id or id prefix (8+ characters).

    Raises ``ValueError`` for a token that can be neither, ``LookupError`` when
    nothing (or more than one entry) matches."""
    if is_position(token):
        number = int(token)
        if not 1 <= number <= len(entries):
            raise LookupError(f"no entry at position {number} (there are {len(entries)})")
        return entries[number - 1]
    if len(token) < MIN_ID_PREFIX:
        raise ValueError(
            f"{token!r} is neither a position nor an id (give at least {MIN_ID_PREFIX} "
            "characters of an id)"
        )
    wanted = token.lower()
    matches = [stored for stored in entries if stored.id.lower().startswith(wanted)]
    if not matches:
        raise LookupError(f"no entry with id {token}")
    if len({stored.id for stored in matches}) > 1:
        raise LookupError(f"id prefix {token} matches {len(matches)} entries; give more of it")
    return matches[0]


class DeadLetterStore(Protocol):
    def describe(self) -> str:
        """Where the entries are, for messages (never with a password)."""

    def read(self) -> list[StoredEntry]:
        """Every stored entry, oldest first."""

    def remove(self, entries: Sequence[StoredEntry]) -> list[bool]:
        """Remove each entry by its bytes; ``False`` where it was already gone."""

    def close(self) -> None: ...


class RedisDeadLetterStore:
    """The list workers' transfer script RPUSHes to; the operator removes with LREM."""

    def __init__(self, client: redis.Redis, key: str, url: str) -> None:
        self.client = client
        self.key = key
        self.url = url
        self._requeue = client.register_script(_REQUEUE)

    @classmethod
    def from_url(cls, url: str, key: str, **params: Any) -> RedisDeadLetterStore:
        params = {"socket_timeout": 30, "socket_connect_timeout": 10, **params}
        params["decode_responses"] = False  # entries are compared byte for byte
        return cls(redis.Redis.from_url(url, **params), key, url)

    def describe(self) -> str:
        return f"{redact_url(self.url)} list {self.key}"

    def read(self) -> list[StoredEntry]:
        values = self.client.lrange(self.key, 0, -1)
        return [StoredEntry.parse(number, _bytes(value)) for number, value in enumerate(values, 1)]

    def read_newest(self, limit: int) -> list[StoredEntry]:
        """The newest ``limit`` entries, oldest first, numbered as :meth:`read` would."""
        total = int(self.client.llen(self.key))
        values = self.client.lrange(self.key, -limit, -1)
        first = max(total - len(values), 0) + 1
        return [
            StoredEntry.parse(number, _bytes(value)) for number, value in enumerate(values, first)
        ]

    def remove(self, entries: Sequence[StoredEntry]) -> list[bool]:
        if not entries:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for stored in entries:
                pipe.lrem(self.key, 1, stored.raw)  # type: ignore[arg-type]
            replies = pipe.execute()
        return [int(reply) == 1 for reply in replies]

    def requeue(self, stored: StoredEntry, queue: str, payload: str, *, keep: bool) -> int:
        """Push ``payload`` onto ``queue`` and remove the entry in one script, so it is
        never both pushed and left (unless ``keep``), nor neither. Returns 1, 0 (the
        entry is gone: nothing pushed) or -1 (``queue`` is not a list: nothing done)."""
        args = [stored.raw, payload.encode("utf-8", "surrogatepass"), b"1" if keep else b"0"]
        return int(self._requeue(keys=[self.key, queue], args=args))

    def close(self) -> None:
        self.client.close()


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class JsonLinesDeadLetterStore:
    """The embedded worker's file, one entry per line, appended by ``MemoryQueue``.

    A removal re-reads the file and rewrites it atomically (temp file, fsync,
    rename), so a reader never sees half a file and a crash leaves the old one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> list[StoredEntry]:
        lines, tail = self._load()
        entries = [StoredEntry.parse(number, line) for number, line in enumerate(lines, 1)]
        if tail:
            entries.append(StoredEntry.parse(len(lines) + 1, tail, last=True))
        return entries

    def remove(self, entries: Sequence[StoredEntry]) -> list[bool]:
        if not self.path.exists():
            return [False] * len(entries)
        with deadletter_lock(self.path):  # a worker's append waits for the rewrite
            return self._remove(entries)

    def _remove(self, entries: Sequence[StoredEntry]) -> list[bool]:
        lines, tail = self._load()
        if tail:  # kept, but ended: a later append must not glue onto it
            lines.append(tail)
        where: defaultdict[bytes, list[int]] = defaultdict(list)
        for index, line in enumerate(lines):
            where[line].append(index)
        for indices in where.values():
            indices.reverse()  # pop() takes the first occurrence, as LREM count 1
        dropped: set[int] = set()
        removed = []
        for stored in entries:
            found = where.get(stored.raw)
            removed.append(bool(found))
            if found:
                dropped.add(found.pop())
        if dropped:
            kept = [line + b"\n" for index, line in enumerate(lines) if index not in dropped]
            self._replace(b"".join(kept))
        return removed

    def close(self) -> None:
        return None

    def _load(self) -> tuple[list[bytes], bytes]:
        """Complete non-blank lines, and what follows the last newline (a torn write)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], b""
        *lines, tail = data.split(b"\n")
        return [line for line in lines if line.strip()], tail if tail.strip() else b""

    def _replace(self, data: bytes) -> None:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, mode)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


def replay_plan(
    stored: StoredEntry, deadletter_key: str, kinds: dict[str, str]
) -> tuple[DeadLetterEntry, str] | str:
    """``(entry, payload prepared by its kind)``, or why it cannot go back as it is."""
    entry = stored.entry
    if entry is None:
        return f"unreadable entry ({stored.problem})"
    if entry.reason in ROW_REASONS:
        return f"a {entry.reason} entry holds an item row, not a queue message"
    if entry.payload_redacted:
        return "its payload had credentials masked (payload_redacted); push the original again"
    if entry.payload_truncated:
        return "its payload was cut at HYDRA_MAX_MESSAGE_BYTES (payload_truncated)"
    if entry.details.get("payload_undecodable"):
        return "its payload was not UTF-8 and is kept escaped (payload_undecodable)"
    if not entry.source or entry.source == deadletter_key:
        return f"no queue to put it back on (source {entry.source!r})"
    path = kinds.get(entry.kind)
    if path is None:  # no kind, or one this deployment does not know: as stored
        return entry, entry.payload
    try:
        kind = load_object(path)
    except (ImportError, NameError, ValueError) as exc:
        return f"task kind {entry.kind} ({path}) cannot be loaded: {exc}"
    try:
        payload: str = kind.replay_payload(entry.payload)
    except Exception as exc:
        return f"its payload is not a valid {entry.kind} message: {_error_text(exc)}"
    return entry, payload


def _error_text(exc: Exception) -> str:
    """One line, at most 200 characters; never the input of a validation (secrets)."""
    if isinstance(exc, ValidationError):
        text = validation_error_text(exc)
    else:
        text = (DEFAULT_REDACTOR.text(str(exc)).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def open_store(config: HydraConfig, redis_params: dict[str, Any] | None = None) -> DeadLetterStore:
    """The store the workers of ``config`` write to (nothing connects yet)."""
    if config.queue_url.lower().startswith(("amqp://", "amqps://")):  # RabbitMQ's queue
        from crawlers.queues.amqp_deadletters import AmqpDeadLetterStore

        return AmqpDeadLetterStore(config.queue_url, config.deadletter_key)
    if config.embedded:
        return JsonLinesDeadLetterStore(project_path(config.deadletter_path))
    return RedisDeadLetterStore.from_url(
        config.redis_url, config.deadletter_key, **(redis_params or {})
    )
