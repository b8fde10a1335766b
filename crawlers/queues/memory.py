"""Embedded queue: one process, no server. Dead-letter entries go to a local file.

Used when ``HYDRA_REDIS_URL`` is empty: ``scrapy crawl prices -a ids=...`` runs
through the same claim/checkpoint/ack path as a distributed worker, with
nothing to set up. Retry delays are kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import itertools
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlers.config import HydraConfig, project_path
from crawlers.queues.base import Acknowledgement, Checkpoint, ClaimResult, Delivery

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


@dataclass
class _Message:
    message_id: str
    payload: str


@contextlib.contextmanager
def deadletter_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<path>.lock``, held by a worker appending dead letters and by
    ``scrapy deadletter purge/replay`` rewriting the file, so neither loses the other's
    lines (a lock on the file itself would not survive its atomic replacement)."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class MemoryQueue:
    shared = False

    def __init__(self, key: str, deadletter_path: Path) -> None:
        self.key = key
        self.deadletter_path = deadletter_path
        self._ready: deque[_Message] = deque()
        self._delayed: list[tuple[float, int, _Message]] = []
        self._leased: dict[str, _Message] = {}
        self._ids = itertools.count(1)

    @classmethod
    def from_crawler(cls, crawler: Crawler, key: str, **_: Any) -> MemoryQueue:
        """One process, one spider: no routing (a message of another type reaches the
        kind, which refuses it)."""
        config = HydraConfig.from_crawler(crawler)
        return cls(key, project_path(config.deadletter_path))

    async def open(self) -> None:
        self.deadletter_path.parent.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def push(self, payloads: Sequence[str]) -> None:
        self._ready.extend(_Message(uuid.uuid4().hex, payload) for payload in payloads)

    async def claim(self, limit: int) -> ClaimResult:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.append(heapq.heappop(self._delayed)[2])
        deliveries: list[Delivery] = []
        while self._ready and len(deliveries) < limit:
            lease_id = f"local:{next(self._ids)}"
            message = self._ready.popleft()
            self._leased[lease_id] = message
            deliveries.append(Delivery(lease_id, message.payload, self.key, message.message_id))
        return ClaimResult(deliveries, delayed=len(self._delayed))

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        return [lease_id for lease_id in lease_ids if lease_id not in self._leased]

    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        results = [ack.lease_id in self._leased for ack in acks]
        lines = [
            line for ack, held in zip(acks, results, strict=True) if held for line in ack.deadletter
        ]
        if lines:  # first: if the file cannot be written, nothing is acked
            await asyncio.to_thread(self._append_deadletter, lines)
        now = time.monotonic()
        for ack, held in zip(acks, results, strict=True):
            if not held:
                continue
            del self._leased[ack.lease_id]
            for requeue in ack.requeue:
                message = _Message(uuid.uuid4().hex, requeue.payload)
                if requeue.delay > 0:
                    due = (now + requeue.delay, next(self._ids), message)
                    heapq.heappush(self._delayed, due)
                else:
                    self._ready.append(message)
        return results

    async def checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        messages = [self._leased.get(checkpoint.lease_id) for checkpoint in checkpoints]
        lines = [
            line
            for checkpoint, message in zip(checkpoints, messages, strict=True)
            if message is not None
            for line in checkpoint.deadletter
        ]
        if lines:  # first: if the file cannot be written, nothing is recorded
            await asyncio.to_thread(self._append_deadletter, lines)
        for checkpoint, message in zip(checkpoints, messages, strict=True):
            if message is not None and checkpoint.payload is not None:
                message.payload = checkpoint.payload
        return [message is not None for message in messages]

    async def release(self, lease_ids: Sequence[str]) -> int:
        released = [self._leased.pop(i) for i in lease_ids if i in self._leased]
        self._ready.extendleft(reversed(released))
        return len(released)

    async def depth(self) -> int:
        return len(self._ready) + len(self._delayed)

    async def server_warnings(self) -> list[str]:
        return []

    async def recover(self) -> None:
        return None

    def describe(self) -> str:
        return f"embedded memory queue {self.key}"

    def describe_deadletter(self) -> str:
        return str(self.deadletter_path)

    def _append_deadletter(self, lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        with deadletter_lock(self.deadletter_path), self.deadletter_path.open("a+b") as file:
            if file.seek(0, os.SEEK_END) > 0:
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":  # a killed writer's torn line: end it first
                    data = b"\n" + data
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
