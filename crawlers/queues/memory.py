"""Embedded queue: one process, no server. Dead-letter entries go to a local file.

Used when ``HYDRA_REDIS_URL`` is empty: ``scrapy crawl prices -a ids=...`` runs
through the same claim/ack path as a distributed worker, with nothing to set up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlers.queues.base import Acknowledgement, ClaimResult, Delivery

if TYPE_CHECKING:
    from crawlers.config import HydraConfig


class MemoryQueue:
    shared = False

    def __init__(self, key: str, deadletter_path: str) -> None:
        self.key = key
        self.deadletter_path = Path(deadletter_path)
        self._waiting: deque[str] = deque()
        self._leased: dict[str, str] = {}
        self._ids = itertools.count(1)

    @classmethod
    def from_config(cls, config: HydraConfig, key: str, **_: Any) -> MemoryQueue:
        return cls(key, config.deadletter_path)

    async def open(self) -> None:
        self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def push(self, payloads: Sequence[str]) -> None:
        self._waiting.extend(payloads)

    async def claim(self, limit: int) -> ClaimResult:
        deliveries: list[Delivery] = []
        while self._waiting and len(deliveries) < limit:
            lease_id = f"local:{next(self._ids)}"
            payload = self._waiting.popleft()
            self._leased[lease_id] = payload
            deliveries.append(Delivery(lease_id, payload, self.key))
        return ClaimResult(deliveries)

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        return [lease_id for lease_id in lease_ids if lease_id not in self._leased]

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        results = []
        lines: list[str] = []
        for ack in acks:
            held = self._leased.pop(ack.lease_id, None) is not None
            results.append(held)
            if held:
                self._waiting.extend(ack.requeue)
                lines.extend(ack.deadletter)
        if lines:
            await asyncio.to_thread(self._append_deadletter, lines)
        return results

    async def release(self, lease_ids: Sequence[str]) -> int:
        released = [self._leased.pop(i) for i in lease_ids if i in self._leased]
        self._waiting.extendleft(reversed(released))
        return len(released)

    def describe_deadletter(self) -> str:
        return str(self.deadletter_path)

    def _append_deadletter(self, lines: list[str]) -> None:
        with self.deadletter_path.open("a", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
            file.flush()
            os.fsync(file.fileno())
