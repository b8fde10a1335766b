"""The task-queue contract: claim under a lease, renew, acknowledge with follow-ups.

A message is never removed when it is handed out. It stays leased to one
worker until that worker acknowledges it, which it does only after the
message's side effects are durable. If the worker dies, the lease runs out and
the message is handed to another worker. The acknowledgement carries the
message's follow-ups (requeued remainders, dead-letter entries) so that they
appear exactly when the message disappears, never both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """One leased message."""

    lease_id: str
    payload: str
    source: str
    #: how often the message was reclaimed from a worker that died holding it
    redeliveries: int = 0


@dataclass(frozen=True)
class Acknowledgement:
    lease_id: str
    requeue: Sequence[str] = ()
    deadletter: Sequence[str] = ()


@dataclass(frozen=True)
class ClaimResult:
    deliveries: list[Delivery]
    #: expired leases returned to the queue during this claim
    reclaimed: int = 0


class TaskQueue(Protocol):
    """A queue of JSON messages with leases. Connects in ``open()``, not before."""

    key: str
    #: False when no other process can push to this queue (embedded mode)
    shared: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def push(self, payloads: Sequence[str]) -> None:
        """Append messages at the tail, as producers do."""

    async def claim(self, limit: int) -> ClaimResult:
        """Lease up to ``limit`` messages (returning expired leases first)."""

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        """Extend these leases; return the ones no longer held."""

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        """Remove leased messages and publish their follow-ups atomically, each.

        ``False`` for a lease no longer held: another worker has the message and
        its follow-ups are dropped (that worker will produce its own).
        """

    async def release(self, lease_ids: Sequence[str]) -> int:
        """Give messages back now (graceful shutdown), at the head of the queue."""

    def describe_deadletter(self) -> str:
        """Where dead-letter entries go, for summaries."""
