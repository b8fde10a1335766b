"""The controller's engine: runs in, batches out, events back, regions regrown.

One controller at a time leads (a Redis lease, ``hydra:controller:leader``):
the leader dispatches, reads the event stream and manages regions; every
controller serves the API, since all state is in Redis. Events are read with a
consumer group, so a restarted controller continues where the last stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import redis.asyncio
from pydantic import ValidationError
from redis.exceptions import ResponseError

from crawlers.config import HydraConfig
from crawlers.models import PriceBatch
from crawlers.models.run_events import RunEvent
from crawlers.queues import new_worker_id
from crawlers.services.controller.dispatcher import Dispatcher
from crawlers.services.controller.launchers import Launchers
from crawlers.services.controller.regions import (
    ACTIVE,
    IDLE,
    QUARANTINED,
    RegionBook,
    RegionState,
    replacements,
)
from crawlers.services.controller.runs import (
    FAILED,
    STORED,
    RegionTimeline,
    RunStore,
    worker_text,
)

logger = logging.getLogger(__name__)

GROUP = "hydra-controller"
LEADER_KEY = "hydra:controller:leader"
_TICK = 0.1
_LEADER_TTL_MS = 10_000
_RENEW_LEADER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class Controller:
    def __init__(
        self,
        config: HydraConfig,
        env: dict[str, str] | None = None,
        launchers: Launchers | None = None,
    ) -> None:
        self.config = config
        self.id = new_worker_id()
        self.env = env
        self._launchers = launchers
        self.client: redis.asyncio.Redis | None = None
        self.leader = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self.client = redis.asyncio.Redis.from_url(self.config.redis_url, decode_responses=True)
        self.runs = RunStore(self.client)
        self.book = RegionBook(self.client, self.config.regions)
        self.timeline = RegionTimeline(self.client)
        self.dispatcher = Dispatcher(self.config, [r.name for r in self.book.regions], self.id)
        await self.dispatcher.open()
        self.launchers = self._launchers or Launchers(self.config, self.env)
        self._renew_leader = self.client.register_script(_RENEW_LEADER)
        self._tasks = [asyncio.ensure_future(self._lead())]

    async def stop(self) -> None:
        """Let the loops finish their round (a dispatch in flight is acked), then stop."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leader:
            await self._stop_local_workers()
        await self.launchers.close()
        await self.dispatcher.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                if self.leader:
                    await self.client.delete(LEADER_KEY)
            await self.client.aclose()

    async def _lead(self) -> None:
        """Take or keep the lead; while leading, run the dispatcher, events and regions."""
        assert self.client is not None
        loops: list[asyncio.Task[None]] = []
        try:
            # the stop flag, not only cancellation: a cancel that lands while redis-py
            # connects can be swallowed, and this loop must still end
            while not self._stopping.is_set():
                try:
                    held = bool(
                        await self._renew_leader(keys=[LEADER_KEY], args=[self.id, _LEADER_TTL_MS])
                    )
                except Exception as exc:
                    logger.warning("Controller cannot reach Redis: %s", exc)
                    held = False
                if held and not loops:
                    logger.info("Controller %s leads", self.id)
                    self.leader = True
                    await self._initialise()
                    loops = [
                        asyncio.ensure_future(self._every(_TICK, self._dispatch)),
                        asyncio.ensure_future(self._every(0.0, self._read_events)),
                        asyncio.ensure_future(self._every(1.0, self._tend_regions)),
                    ]
                elif not held and loops:
                    logger.warning("Controller %s lost the lead", self.id)
                    self.leader = False
                    for loop in loops:
                        loop.cancel()
                    loops = []
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), _LEADER_TTL_MS / 3000)
        finally:
            if loops:  # they end on the stop flag after their current round
                await asyncio.wait(loops, timeout=4.0)
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Controller job %s failed", job.__name__)
                await asyncio.sleep(1.0)
            await asyncio.sleep(seconds)

    async def _initialise(self) -> None:
        assert self.client is not None
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.client.xgroup_create(self.config.events_key, GROUP, id="0", mkstream=True)
        await self.book.initialise()
        self._budget = 0.0

    # -- runs --------------------------------------------------------------

    async def create_run(self, ids: Sequence[str]) -> dict[str, Any]:
        run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        size = self.config.worker_batch_size
        payloads = [
            PriceBatch(
                run_id=run_id, batch_id=f"b{number:06d}", ids=list(ids[start : start + size])
            ).model_dump_json(exclude_none=True)
            for number, start in enumerate(range(0, len(ids), size))
        ]
        await self.runs.create(run_id, ids, len(payloads))
        await self.dispatcher.submit(payloads)
        logger.info("Run %s: %d IDs in %d batches", run_id, len(ids), len(payloads))
        return {"run_id": run_id, "ids": len(ids), "batches": len(payloads)}

    # -- leader loops ------------------------------------------------------

    async def _dispatch(self) -> None:
        states = await self.book.load()
        active = [name for name, state in states.items() if state.state == ACTIVE]
        self._budget = min(
            self._budget + self.config.dispatch_rate * _TICK, max(self.config.dispatch_rate, 1.0)
        )
        if not active or self._budget < 1:
            return
        sent = await self.dispatcher.dispatch(active, int(self._budget))
        self._budget -= len(sent)
        for run_id in {batch.run_id for _, batch in sent}:
            await self.runs.count(
                run_id, "dispatched", sum(1 for _, b in sent if b.run_id == run_id)
            )

    async def _read_events(self) -> None:
        assert self.client is not None
        # first what this controller read but did not finish (a crash), then new events
        for start in ("0", ">"):
            answer = await self.client.xreadgroup(
                GROUP,
                self.id,
                {self.config.events_key: start},
                count=500,
                block=1000 if start == ">" else None,
            )
            streams = cast("list[tuple[str, list[tuple[str, dict[str, str]]]]]", answer or [])
            for _, entries in streams:
                if entries:
                    await self._apply(entries)

    async def _apply(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        assert self.client is not None
        states = await self.book.load()
        changed: set[str] = set()
        for entry_id, fields in entries:
            try:
                event = RunEvent.model_validate_json(fields.get("event", ""))
            except ValidationError as exc:
                logger.error("Ignoring a malformed event %s: %s", entry_id, exc)
                continue
            state = states.get(event.region)
            if event.type == "stored":
                count = await self.runs.mark(event.run_id, event.ids, STORED, event.region)
                if state is not None:
                    state.ids_stored += count
            elif event.type == "failed":
                count = await self.runs.mark(event.run_id, event.ids, FAILED, event.region)
                if state is not None:
                    state.ids_failed += count
            elif event.type == "done" and state is not None:
                state.batches_done += 1
            elif event.type == "stopped":
                await self.runs.count(event.run_id, "stops")
                if state is not None:
                    state.batches_stopped += 1
                    changed.update(await self._region_stopped(states, state, event))
            if state is not None:
                changed.add(state.name)
        await self.book.save(*(states[name] for name in sorted(changed)))
        await self.client.xack(
            self.config.events_key, GROUP, *(entry_id for entry_id, _ in entries)
        )

    async def _region_stopped(
        self, states: dict[str, RegionState], state: RegionState, event: RunEvent
    ) -> list[str]:
        """The hydra: a blocked region is quarantined, two neighbours grow in its place.
        Returns the regions whose state changed besides ``state``."""
        if self.book.implicit or state.state != ACTIVE:
            return []  # the default region just retries; an already stopped one has no worker
        logger.warning(
            "Region %s stopped batch %s (%s): quarantined for %.0f s",
            state.name, event.batch_id, event.reason, self.config.region_cooldown_seconds,
        )  # fmt: skip
        state.state = QUARANTINED
        state.quarantined_until = time.time() + self.config.region_cooldown_seconds
        await self.timeline.record(
            QUARANTINED, state.name, reason=event.reason, batch=event.batch_id,
            run=event.run_id, until=state.quarantined_until,
        )  # fmt: skip
        await self._stop_worker(state, "quarantined")
        grown = replacements(self.book.regions, states, state.name, self.config.max_active_regions)
        for name in grown:
            states[name].state = ACTIVE
            logger.warning("Region %s activated in place of %s", name, state.name)
            await self.timeline.record("activated", name, in_place_of=state.name)
        return grown

    async def _tend_regions(self) -> None:
        """Cooldowns end, active regions have a live worker, inactive ones are emptied."""
        states = await self.book.load()
        now = time.time()
        dirty: list[RegionState] = []
        for state in states.values():
            if state.state == QUARANTINED and (state.quarantined_until or 0) <= now:
                state.state, state.quarantined_until = IDLE, None
                dirty.append(state)
                logger.info("Region %s is out of quarantine", state.name)
                await self.timeline.record("released", state.name)
        if not any(s.state == ACTIVE for s in states.values()):
            idle = [r for r in self.book.regions if states[r.name].state == IDLE]
            if idle:  # nothing could take work: bring one back rather than wait forever
                first = next((r for r in idle if r.start), idle[0])
                states[first.name].state = ACTIVE
                dirty.append(states[first.name])
                await self.timeline.record("activated", first.name, reason="no region was active")
        for region in self.book.regions:
            state = states[region.name]
            if state.state == ACTIVE and not self.book.implicit:
                if state.worker is None or not await self._alive(state.worker):
                    why = "" if state.worker is None else "the last one had ended"
                    state.worker = await self.launchers.for_region(region).start(region)
                    dirty.append(state)
                    await self.timeline.record(
                        "worker_started", region.name, worker=worker_text(state.worker), reason=why
                    )
            elif state.state != ACTIVE:
                if state.worker is not None:
                    await self._stop_worker(state, f"the region is {state.state}")
                    dirty.append(state)
                taken = await self.dispatcher.take_back(region.name)
                if taken:
                    logger.info(
                        "Moved %d batches from region %s to the active regions", taken, region.name
                    )
        await self.book.save(*dirty)

    async def _alive(self, handle: dict[str, Any]) -> bool:
        try:
            return await self.launchers.for_handle(handle).alive(handle)
        except Exception as exc:
            logger.warning("Cannot tell whether worker %s lives: %s", handle, exc)
            return True  # do not start a second worker on a node we cannot see

    async def _stop_worker(self, state: RegionState, why: str) -> None:
        handle, state.worker = state.worker, None
        if handle is None:
            return
        try:
            await self.launchers.for_handle(handle).stop(handle)
        except Exception as exc:  # its leases expire; the region is drained regardless
            logger.warning("Stopping the worker of region %s failed: %s", state.name, exc)
        await self.timeline.record(
            "worker_stopped", state.name, worker=worker_text(handle), reason=why
        )
        state.stopped_workers = [*state.stopped_workers[-9:], {**handle, "stopped_at": time.time()}]

    async def _stop_local_workers(self) -> None:
        """On shutdown, this controller's child processes go with it (gracefully)."""
        with contextlib.suppress(Exception):
            states = await self.book.load()
            dirty = []
            for state in states.values():
                if state.worker is not None and state.worker.get("launcher") == "local":
                    await self._stop_worker(state, "the controller stopped")
                    dirty.append(state)
            await self.book.save(*dirty)

    async def regions_view(self) -> list[dict[str, Any]]:
        return await self.book.view()
