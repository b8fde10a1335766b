"""Where seed-003 fetch tasks take their files from: one module per source type."""

from crawlers.sources.base import (
    FetchedFile,
    RemoteFile,
    Source,
    SourceError,
    matches_pattern,
    safe_relative_path,
)

__all__ = [
    "FetchedFile",
    "RemoteFile",
    "Source",
    "SourceError",
    "matches_pattern",
    "safe_relative_path",
]
