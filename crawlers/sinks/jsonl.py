"""JSON-lines file sink, the embedded default: ``jsonl:///abs/path`` or ``jsonl://rel/path``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit


class JsonLinesSink:
    """Appends one JSON object per line; ``flush()`` fsyncs, so an ack after it is safe.

    Rows go to Python's file buffer on ``write()`` (cheap, bounded memory); a
    process killed before ``flush()`` may leave a torn last line, which readers
    skip: its message was not acked and will be fetched again.
    """

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        self.path = path
        self._file: IO[str] | None = None

    @classmethod
    def from_uri(cls, uri: str) -> JsonLinesSink:
        parts = urlsplit(uri)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"jsonl sink URI without a path: {uri!r}")
        return cls(uri, Path(path))

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    async def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        file = self._opened()
        file.write("".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in rows))

    async def flush(self) -> None:
        file = self._opened()
        file.flush()
        await asyncio.to_thread(os.fsync, file.fileno())

    async def close(self) -> None:
        if self._file is not None:
            await self.flush()
            self._file.close()
            self._file = None

    def describe(self) -> str:
        return str(self.path.resolve())

    def _opened(self) -> IO[str]:
        if self._file is None:
            raise RuntimeError(f"sink {self.uri} used before open()")
        return self._file
