"""The task-queue contract: claim under a lease, renew, checkpoint, acknowledge with follow-ups.

A message is never removed when it is handed out. It stays leased to one
worker until that worker acknowledges it, which it does only after the
message's side effects are durable. If the worker dies, the lease runs out and
the message is handed to another worker. The acknowledgement carries the
message's follow-ups (requeued remainders, dead-letter entries) so that they
appear exactly when the message disappears, never both or neither.

While a message is held, the worker may *checkpoint* it: replace the leased
payload by the part that is not yet durable (its resume point). A reclaimed or
released message is then delivered from there, so a crash duplicates only what
was written since the last flush.

Every message gets an identity (``message_id``) when first claimed; it stays
with the message through reclaims, releases and checkpoints, and carries the
count of deliveries to workers that died holding it (poison detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """One leased message."""

    lease_id: str
    payload: str
    source: str
    message_id: str = ""
    #: how often the message was reclaimed from a worker that died holding it
    redeliveries: int = 0
    #: the payload's bytes were not UTF-8 (``payload`` holds them backslash-escaped)
    undecodable: bool = False


@dataclass(frozen=True)
class Requeue:
    """A follow-up message, claimable after ``delay`` seconds."""

    payload: str
    delay: float = 0.0


@dataclass(frozen=True)
class Acknowledgement:
    lease_id: str
    requeue: Sequence[Requeue] = ()
    deadletter: Sequence[str] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A held message's resume point and dead letters that must not wait for its ack."""

    lease_id: str
    #: replaces the leased payload; ``None`` keeps it
    payload: str | None = None
    deadletter: Sequence[str] = ()


@dataclass(frozen=True)
class Route:
    """A queue shared by several kinds of worker: messages are routed by ``field``
    (e.g. ``source_type``) among ``types``; this worker takes the ``wanted`` ones."""

    field: str
    types: tuple[str, ...]
    wanted: frozenset[str]


@dataclass(frozen=True)
class ClaimResult:
    deliveries: list[Delivery] = field(default_factory=list)
    #: expired leases of dead workers returned to the queue during this claim
    reclaimed: int = 0
    #: messages waiting for a retry delay: work that is still to come
    delayed: int = 0


class TaskQueue(Protocol):
    """A queue of messages with leases. ``open()`` does no network I/O; a server that is
    away shows as exceptions from the calls, which the ledger retries."""

    key: str
    #: False when no other process can push to this queue (embedded mode)
    shared: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def push(self, payloads: Sequence[str]) -> None:
        """Append messages at the tail, as producers do."""

    async def claim(self, limit: int) -> ClaimResult:
        """Lease up to ``limit`` messages: reclaimed, released and due retries first."""

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        """Extend these leases; return the ones no longer held."""

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        """Remove leased messages and publish their follow-ups atomically, each.

        ``False`` for a lease no longer held: another worker has the message and
        its follow-ups are dropped (that worker will produce its own).
        """

    async def checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        """Record resume points (and dead letters) of held messages; ``False``: lease lost."""

    async def release(self, lease_ids: Sequence[str]) -> int:
        """Give messages back now (graceful shutdown), at the head, from their checkpoint."""

    async def depth(self) -> int:
        """Messages waiting (ready or delayed), for progress lines."""

    async def server_warnings(self) -> list[str]:
        """Deployment problems worth a warning at start (e.g. a Redis without persistence)."""

    async def recover(self) -> None:
        """Finish what a dead worker left half-done (e.g. dead letters not yet moved)."""

    def describe(self) -> str:
        """Where messages come from, for people (no credentials)."""

    def describe_deadletter(self) -> str:
        """Where dead-letter entries go, for summaries."""
