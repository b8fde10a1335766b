"""The sink contract: buffer rows cheaply, make them durable on ``flush()``.

A sink never loses a row it accepted: rows written since the last good flush
stay with the sink until a flush makes them durable. If a flush fails, the
sink raises and keeps those rows for the next flush; the worker keeps the
leases of the messages they belong to until one succeeds. Rows a sink will
never store (bad data, refused by the warehouse) come back from ``flush()``
as :class:`Rejection`s and are dead-lettered without holding up the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Row:
    """One item, as a sink sees it."""

    #: stable identity (a BigQuery ``insertId``, a ClickHouse dedup key): the same
    #: item fetched again after a crash has the same key
    key: str
    data: Mapping[str, Any]
    #: opaque tag of whoever owes the row (the task run's lease)
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Rejection:
    row: Row
    error: str


class SinkError(Exception):
    """A sink could not make its rows durable; they are kept for the next flush."""


class Sink(Protocol):
    uri: str

    async def open(self) -> None: ...

    async def write(self, rows: Sequence[Row]) -> None:
        """Accept rows; they need not be durable until ``flush()`` returns."""

    def wants_flush(self) -> bool:
        """The sink's own cadence (rows, bytes, age of its buffer) asks for a flush."""

    async def flush(self) -> list[Rejection]:
        """Make every row accepted so far durable, or raise and keep them; return the
        rows that will never be stored."""

    async def close(self) -> None:
        """Release resources; rows not flushed by then are the caller's to redo."""

    def describe(self) -> str:
        """Where the rows are, for people (no credentials)."""
