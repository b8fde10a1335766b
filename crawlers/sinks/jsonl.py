"""JSON-lines file sink, the embedded default: ``jsonl:///abs/path`` or ``jsonl://rel/path``.

Options in the query: ``flush_rows`` (default 5000), ``flush_bytes`` (4 MiB) and
``flush_seconds`` (1.0) make the sink ask for a flush on its own; the worker
flushes before every ack regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from crawlers.config import project_path
from crawlers.sinks.base import Rejection, Row, SinkError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class JsonLinesSink:
    """Appends one JSON object per line; a row is durable once ``flush()`` returned.

    Rows are serialised on ``write()`` and kept in memory, not in a file buffer
    that a failed write would silently discard. ``flush()`` writes them with
    ``os.write`` and fsyncs; if either fails (disk full, I/O error), the file is
    truncated back to its last durable size, reopened on the next flush, and
    every row is written again then. The file is locked (``flock``) while open,
    so two processes never append to one file unknowingly, and a torn last line
    left by a killed writer is cut off when the file is opened.
    """

    def __init__(
        self,
        uri: str,
        path: Path,
        *,
        flush_rows: int = 5000,
        flush_bytes: int = 4 << 20,
        flush_seconds: float = 1.0,
    ) -> None:
        self.uri = uri
        self.path = path
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self._fd: int | None = None
        self._durable_size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._rejected: list[Rejection] = []
        self._lock = asyncio.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> JsonLinesSink:
        return cls.from_uri(uri)

    @classmethod
    def from_uri(cls, uri: str) -> JsonLinesSink:
        parts = urlsplit(uri)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"jsonl sink URI without a path: {uri!r}")
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        return cls(
            uri,
            project_path(path),
            flush_rows=int(options.get("flush_rows", 5000)),
            flush_bytes=int(options.get("flush_bytes", 4 << 20)),
            flush_seconds=float(options.get("flush_seconds", 1.0)),
        )

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if created:  # the file's name must survive a power cut as well as its rows
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SinkError(
                f"{self.path} is being written by another process; give each worker "
                "its own file (HYDRA_SINKS)"
            ) from None
        try:
            self._durable_size = self._repair(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _repair(self, fd: int) -> int:
        """Cut a torn last line (a writer killed mid-write); return the clean size."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        tail_start = max(0, size - 65536)
        while True:
            chunk = os.pread(fd, size - tail_start, tail_start)
            if chunk.endswith(b"\n"):
                return size
            newline = chunk.rfind(b"\n")
            if newline >= 0 or tail_start == 0:
                clean = tail_start + newline + 1
                os.ftruncate(fd, clean)
                os.fsync(fd)
                logger.warning(
                    "%s ended with a torn line (a writer was killed mid-write); "
                    "cut %d bytes: that row was never acknowledged and will be fetched again",
                    self.path,
                    size - clean,
                )
                return clean
            tail_start = max(0, tail_start - 65536)

    async def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            try:
                line = json.dumps(row.data, default=str, ensure_ascii=False) + "\n"
                data = line.encode("utf-8")
            except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
                self._rejected.append(Rejection(row, f"not serialisable as JSON: {exc}"))
                continue
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(data)
            self._pending_bytes += len(data)

    def wants_flush(self) -> bool:
        if not self._pending:
            return False
        return (
            len(self._pending) >= self.flush_rows
            or self._pending_bytes >= self.flush_bytes
            or time.monotonic() - self._pending_since >= self.flush_seconds
        )

    async def flush(self) -> list[Rejection]:
        async with self._lock:
            rejected, self._rejected = self._rejected, []
            if not self._pending:
                return rejected
            pending, size = self._pending, self._pending_bytes
            self._pending, self._pending_bytes = [], 0
            write = asyncio.ensure_future(asyncio.to_thread(self._write_durably, b"".join(pending)))
            try:
                # a cancelled flush must not leave the thread writing while the rows
                # are put back: wait for it, then decide from what it did
                await asyncio.shield(write)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await write
                if write.exception() is not None:
                    self._keep(pending, size, rejected)
                raise
            except BaseException:
                self._keep(pending, size, rejected)
                raise
            return rejected

    def _keep(self, pending: list[bytes], size: int, rejected: list[Rejection]) -> None:
        """Nothing of a failed flush counts as stored: keep it all for the next flush."""
        self._pending = pending + self._pending
        self._pending_bytes += size
        self._rejected = rejected + self._rejected

    def _write_durably(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        fd = self._fd
        assert fd is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            self._discard_fd(fd)
            raise SinkError(f"writing {self.path} failed: {exc}") from exc
        self._durable_size += len(data)

    def _discard_fd(self, fd: int) -> None:
        """After a failed write: cut what was partly written, and reopen next time."""
        try:
            os.ftruncate(fd, self._durable_size)
            os.fsync(fd)
        except OSError:
            pass  # the next open repairs a torn tail anyway
        os.close(fd)
        self._fd = None

    async def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(os.close, fd)

    def describe(self) -> str:
        return str(self.path)

    @property
    def pending_rows(self) -> int:
        return len(self._pending)
