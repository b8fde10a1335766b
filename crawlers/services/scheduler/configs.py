"""The task configs a scheduler replica works from: loaded once, then kept current.

Reading every config from the database on every tick costs a query (and a
decryption) per task per half second: at 10,000 tasks the tick never ends. So a
replica loads them all at start, keeps them in memory with a heap of next fire
times (a tick touches only the configs that are due), and reloads one config
when it hears of a change: its own API calls, the config topic (other
replicas), the tasks file. A cheap comparison of versions every
:data:`RESYNC_SECONDS` catches a notice that was lost.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from crawlers.models.task_config import TaskConfig
from crawlers.services.scheduler.secrets import SecretBox
from crawlers.services.scheduler.store import SchedulerStore, StoredTaskConfig
from crawlers.services.scheduler.triggers import due_fires, next_fire

logger = logging.getLogger(__name__)
#: how often the cache compares its versions with the database's
RESYNC_SECONDS = 30.0


@dataclass
class CachedTask:
    task: TaskConfig
    version: int
    paused: bool
    #: the fire this replica last handled (claimed or not), where the next window starts
    last: datetime
    #: bumped on every reload, so stale heap entries are recognised and dropped
    generation: int


class ConfigCache:
    def __init__(self, store: SchedulerStore, box: SecretBox) -> None:
        self.store = store
        self.box = box
        self.tasks: dict[str, CachedTask] = {}
        self._heap: list[tuple[datetime, str, int]] = []
        self._generation = 0
        self._synced = 0.0

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, name: str) -> TaskConfig | None:
        cached = self.tasks.get(name)
        return cached.task if cached is not None else None

    async def load(self) -> None:
        """Every config, with where each task's schedule stands."""
        stored = await self.store.list_configs()
        fires = await self.store.last_fires()
        self.tasks.clear()
        self._heap.clear()
        for config in stored:
            self._put(config, fires.get(config.name))
        heapq.heapify(self._heap)
        self._synced = time.monotonic()

    async def reload(self, name: str) -> None:
        """Re-read one config after a change (or its removal)."""
        config = await self.store.get_config(name)
        if config is None:
            self.tasks.pop(name, None)
            return
        old = self.tasks.get(name)
        last = old.last if old is not None else await self.store.last_fire(name)
        self._put(config, last, push=True)

    async def resync(self, *, force: bool = False) -> list[str]:
        """Reload the configs whose version or pause flag differs from the database's;
        their names."""
        if not force and time.monotonic() - self._synced < RESYNC_SECONDS:
            return []
        self._synced = time.monotonic()
        current = await self.store.config_versions()
        changed = [
            name
            for name, (version, paused) in current.items()
            if name not in self.tasks
            or (self.tasks[name].version, self.tasks[name].paused) != (version, paused)
        ]
        changed += [name for name in self.tasks if name not in current]
        for name in changed:
            await self.reload(name)
        return changed

    def _put(self, config: StoredTaskConfig, last: datetime | None, *, push: bool = False) -> None:
        try:
            task = TaskConfig.join_secrets(config.config, self.box.unseal(config.secrets_encrypted))
        except Exception as exc:  # a key rotated away: the task cannot run, the rest can
            logger.error("Task %s not loaded: %s", config.name, type(exc).__name__)
            self.tasks.pop(config.name, None)
            return
        self._generation += 1
        cached = CachedTask(
            task=task.model_copy(update={"paused": config.paused}),
            version=config.version,
            paused=config.paused,
            last=last or config.created_at,
            generation=self._generation,
        )
        self.tasks[config.name] = cached
        self._schedule(config.name, cached, push=push)

    def _schedule(self, name: str, cached: CachedTask, *, push: bool = True) -> None:
        upcoming = next_fire(cached.task.schedule, cached.last)
        if upcoming is None:
            return
        entry = (upcoming, name, cached.generation)
        if push:
            heapq.heappush(self._heap, entry)
        else:
            self._heap.append(entry)

    def due(self, now: datetime, limit: int | None = None) -> list[tuple[TaskConfig, datetime]]:
        """The fires due at ``now``, each task at most once (see :func:`due_fires`), at
        most ``limit`` of them (the others stay due); paused tasks skip theirs. Advances
        each returned task's window to ``now``."""
        fires: list[tuple[TaskConfig, datetime]] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(fires) < limit):
            _when, name, generation = heapq.heappop(self._heap)
            cached = self.tasks.get(name)
            if cached is None or cached.generation != generation:
                continue  # removed or reloaded since: its current entry is elsewhere
            due = due_fires(cached.task.schedule, cached.last, now, cached.task.missed)
            if due and not cached.paused:
                fires.append((cached.task, due[-1]))
            cached.last = due[-1] if due else now
            self._schedule(name, cached)
        return fires
