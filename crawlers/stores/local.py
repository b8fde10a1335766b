"""Local directory store, the embedded default: ``file:///abs/dir`` or ``file://relative/dir``.

A put copies into a temporary file beside the target, fsyncs it, renames it over
the target and fsyncs the directory: a crash leaves the old file or the new
one, never half of one, and a stored file survives a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from crawlers.config import project_path
from crawlers.sources.base import safe_relative_path

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class LocalStore:
    """Files under ``root`` at their key, e.g. ``root/channel/job/a/b.csv``."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> LocalStore:
        return cls.from_uri(uri)

    @classmethod
    def from_uri(cls, uri: str) -> LocalStore:
        parts = urlsplit(uri)
        path = unquote(parts.netloc + parts.path)
        if parts.scheme != "file" or not path:
            raise ValueError(f"file store URI without a path: {uri!r}")
        return cls(uri, project_path(path))

    async def open(self) -> None:
        await asyncio.to_thread(_make_dirs, self.root)

    async def put(self, local_path: Path, key: str) -> None:
        target = self._target(key)
        await asyncio.to_thread(self._put, local_path, target)

    def _target(self, key: str) -> Path:
        try:
            return self.root / safe_relative_path(key)
        except ValueError as exc:
            raise ValueError(f"store key {key!r} refused: {exc}") from None

    def _put(self, local_path: Path, target: Path) -> None:
        _make_dirs(target.parent)
        # a symlinked folder inside the root must not lead the file out of it
        if not target.parent.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"store key for {target} leaves {self.root}")
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(fd, "wb") as out, open(local_path, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fchmod(out.fileno(), 0o644)
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_dir(target.parent)

    def folder_uri(self, key_prefix: str) -> str:
        prefix = key_prefix.strip("/")
        folder = self._target(prefix) if prefix else self.root
        return folder.as_uri().rstrip("/") + "/"

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return str(self.root)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new directories are durable: each parent fsynced after."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
