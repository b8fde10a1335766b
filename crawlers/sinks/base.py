"""The sink contract: buffer rows cheaply, make them durable on ``flush()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Sink(Protocol):
    uri: str

    async def open(self) -> None: ...

    async def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Accept rows; they need not be durable until ``flush()`` returns."""

    async def flush(self) -> None:
        """Make every row written so far durable; raise if that failed."""

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the rows are, for people (no credentials)."""
