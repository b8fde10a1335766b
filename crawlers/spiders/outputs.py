"""The outputs of the runs a task spider drives at once, merged into its ``start()``.

Each claimed run is driven by its own asyncio task (so a run that awaits direct
downloads does not hold up the others); the intake is one more task. They put
``(run, output)`` pairs into one bounded queue, which ``start()`` drains and
hands to Scrapy: a driver that gets ahead of Scrapy waits (back-pressure). The
merged stream ends when every producer has finished and the queue is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from crawlers.tasks.base import TaskRun

#: the output a driver puts last: its run's ``start_task`` is exhausted
STARTED = object()


class RunOutputs:
    def __init__(self, size: int) -> None:
        # unbounded, so the end marker can always be put; the semaphore bounds outputs
        self._queue: asyncio.Queue[tuple[TaskRun, Any] | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(max(size, 1))
        self._producers: set[asyncio.Task[None]] = set()

    def spawn(self, producer: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(producer)
        self._producers.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._producers.discard(task)
        if not self._producers:
            self._queue.put_nowait(None)  # wakes the consumer to notice the end

    async def put(self, run: TaskRun, output: Any) -> None:
        await self._room.acquire()
        self._queue.put_nowait((run, output))

    async def __aiter__(self) -> AsyncIterator[tuple[TaskRun, Any]]:
        while True:
            entry = await self._queue.get()
            if entry is not None:
                self._room.release()
                yield entry
            elif not self._producers and self._queue.empty():
                return

    def cancel(self, producer: asyncio.Task[None] | None = None) -> None:
        """Cancel one producer, or all of them."""
        for task in [producer] if producer is not None else list(self._producers):
            if task in self._producers:
                task.cancel()
