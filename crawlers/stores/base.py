"""The store contract: fetched files kept under ``{prefix}/{channel_id}/{job_id}/{path}``.

A put is idempotent (the same key again overwrites the same object), so a job
redelivered after a crash stores nothing twice. ``put`` returns only once the
object is durably stored; blocking clients run in threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Store(Protocol):
    uri: str

    async def open(self) -> None: ...

    async def put(self, local_path: Path, key: str) -> None:
        """Store the file at ``local_path`` as ``key`` (``channel/job/relative path``)."""

    def folder_uri(self, key_prefix: str) -> str:
        """The URI of a folder of keys, e.g. ``s3://bucket/prefix/channel/job/``."""

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the files are, for people (no credentials)."""
