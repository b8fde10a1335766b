"""The contract of a file source (S3 bucket, FTP server...): list, then fetch each file.

A source is opened with one task's configuration (its credentials included) and
used from the reactor's event loop; every blocking call of a client library runs
in a thread. Files are streamed to a local temporary file while their SHA-256 is
computed, so memory stays flat whatever their size. Errors are
:class:`SourceError`s that say whether retrying can help and never contain a
credential.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: no NUL or other control characters (C0, DEL, C1) in a remote name
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SourceError(Exception):
    """A source operation failed; ``transient`` errors may succeed when retried
    (connection errors, timeouts, 5xx, throttling), the others never will
    (wrong credentials, missing bucket or path). The message is safe to show."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RemoteFile:
    """A file a source offers, named relative to the task's ``remote_path``."""

    #: posix path relative to ``remote_path`` (already checked by safe_relative_path)
    path: str
    size: int | None = None
    #: the source's own name for it (an S3 key, an FTP path), for fetching
    locator: str = ""


@dataclass(frozen=True)
class FetchedFile:
    remote: RemoteFile
    local_path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Listing:
    """What a listing found: the files to fetch, and names refused as unsafe."""

    files: list[RemoteFile]
    refused: list[str]


class Source(Protocol):
    async def list(self) -> Listing:
        """Files under the task's ``remote_path`` (every folder) whose name matches its
        ``file_pattern``; unsafe names are refused, not listed."""

    async def fetch(self, remote: RemoteFile, into: Path) -> FetchedFile:
        """Stream ``remote`` into the file ``into`` (created), hashing it on the way."""

    async def close(self) -> None: ...


def safe_relative_path(name: str) -> str:
    """``name`` as a relative posix path that stays inside the job's folder, or
    ``ValueError`` saying why not: absolute paths, ``..``, empty parts, NUL and
    control characters are refused."""
    if not name or _CONTROL.search(name):
        raise ValueError("empty, or holds NUL or control characters")
    if "\\" in name:
        raise ValueError("holds a backslash")
    if name.startswith("/"):
        raise ValueError("is absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("has an empty, '.' or '..' part")
    normal = posixpath.normpath(name)
    if normal != name or normal.startswith("../"):
        raise ValueError("is not a plain relative path")
    return name


def matches_pattern(pattern: str, path: str) -> bool:
    """``file_pattern`` is matched against the file's name (fnmatch), in any folder."""
    return fnmatch.fnmatchcase(posixpath.basename(path), pattern or "*")
