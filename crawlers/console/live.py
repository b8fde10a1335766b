"""What makes the console live: job state changes and log lines pushed over Server-Sent Events.

:class:`JobFeed` reads the job history table (``job_transitions``: every state
change the scheduler made from the status stream, its own triggers and its
reaper) by id, one reader per process shared by every open console. A change
made by this replica wakes it at once; changes made by other replicas arrive
within ``poll_seconds``. It re-reads a short window below its cursor, since on
PostgreSQL a transaction that took a smaller id may commit after a larger one.
A subscriber too slow to keep up is told to reload instead of being waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crawlers.db.state import StateDB
from crawlers.models.job_status import FIRST_ITEMS_KEY
from crawlers.services.scheduler.store import JOBS, TRANSITIONS

logger = logging.getLogger(__name__)
#: ids below the cursor re-read each time (commits out of id order)
REREAD = 64
#: changes queued for one subscriber before it is told to reload
SUBSCRIBER_BACKLOG = 1000
#: a log tail starts this far from the end of the file
TAIL_START = 64 * 1024
#: most bytes one log event carries
LOG_CHUNK = 256 * 1024


@dataclass(frozen=True)
class JobChange:
    seq: int
    job_id: str
    task: str
    state: str
    reason: str
    at: str
    attempt: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


RELOAD = JobChange(0, "", "", "reload", "", "", 0)


class JobFeed:
    def __init__(self, db: StateDB, poll_seconds: float = 0.5) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self._subscribers: set[asyncio.Queue[JobChange]] = set()
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._cursor: int | None = None
        self._floor = 0
        self._seen: deque[int] = deque(maxlen=4 * REREAD)

    def poke(self) -> None:
        """Something changed here: read now rather than at the next poll."""
        self._wake.set()

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[JobChange]]:
        queue: asyncio.Queue[JobChange] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        if self._reader is None or self._reader.done():
            # nobody watched: what happened meanwhile is on the page being opened
            self._cursor = self._floor = await asyncio.to_thread(self._last_id)
            self._seen.clear()
        self._subscribers.add(queue)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read_while_watched())
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read_while_watched(self) -> None:
        while self._subscribers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            try:
                changes = await asyncio.to_thread(self._read)
            except Exception as exc:  # the database is away: keep the consoles open, try again
                logger.warning("Console job feed cannot read the database: %s", exc)
                continue
            for change in changes:
                for queue in list(self._subscribers):
                    try:
                        queue.put_nowait(change)
                    except asyncio.QueueFull:
                        self._subscribers.discard(queue)
                        with contextlib.suppress(asyncio.QueueEmpty):
                            queue.get_nowait()
                        queue.put_nowait(RELOAD)

    def _last_id(self) -> int:
        with self.db.transaction(write=False) as connection:
            return int(connection.execute(select(func.max(TRANSITIONS.c.id))).scalar() or 0)

    def _read(self) -> list[JobChange]:
        assert self._cursor is not None
        query = (
            select(
                TRANSITIONS.c.id,
                TRANSITIONS.c.job_id,
                TRANSITIONS.c.to_state,
                TRANSITIONS.c.reason,
                TRANSITIONS.c.at,
                JOBS.c.task_name,
                JOBS.c.attempt,
            )
            .join(JOBS, JOBS.c.job_id == TRANSITIONS.c.job_id)
            .where(TRANSITIONS.c.id > self._cursor - REREAD)
            .order_by(TRANSITIONS.c.id)
            .limit(2000)
        )
        with self.db.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        seen = set(self._seen)
        changes = []
        for row in rows:
            if row.id in seen or row.id <= self._floor:
                continue
            self._seen.append(row.id)
            self._cursor = max(self._cursor, row.id)
            changes.append(
                JobChange(
                    row.id,
                    row.job_id,
                    row.task_name,
                    row.to_state,
                    row.reason[:300],
                    row.at.isoformat(),
                    row.attempt,
                )
            )
        return changes


def sse(event: str, data: str) -> str:
    """One Server-Sent Event (``data`` is one line of JSON)."""
    return f"event: {event}\ndata: {data}\n\n"


async def tail_file(
    path: Path, finished: Callable[[], Awaitable[bool]], poll_seconds: float = 0.25
) -> AsyncIterator[list[str]]:
    """The file's last lines, then its new lines as they are written, in batches (a job
    writing thousands of lines a second is read in chunks, not line by line); ends once
    ``finished()`` says the job is over and nothing more was written."""
    offset: int | None = None
    partial = b""
    idle = 0.0
    while True:
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            size = 0
        if offset is None:
            offset = max(0, size - TAIL_START)
            skip_first = offset > 0  # a cut line
        else:
            skip_first = False
        if size < offset:  # truncated or replaced: start again from its beginning
            offset, partial = 0, b""
        if size > offset:
            data = await asyncio.to_thread(_read_at, path, offset, min(size - offset, LOG_CHUNK))
            offset += len(data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            if len(partial) > LOG_CHUNK:  # a "line" that never ends: sent as it is
                lines.append(partial)
                partial = b""
            if skip_first and lines:
                lines = lines[1:]
            if lines:
                yield [line.decode("utf-8", "replace") for line in lines]
            idle = 0.0
            continue
        if idle >= 1.0:  # a second without a line: is its job over? (asked once a second)
            idle = 0.0
            if await finished():
                if partial:
                    yield [partial.decode("utf-8", "replace")]
                return
        await asyncio.sleep(poll_seconds)
        idle += poll_seconds


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(size)


def stats_view(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """Stats as sorted (key, value) text pairs, without the items the job reported."""
    return [(key, str(value)) for key, value in sorted(stats.items()) if key != FIRST_ITEMS_KEY]
