"""The hydra's region rules on a real Redis, in process: quarantine, two neighbours
(capped by HYDRA_MAX_ACTIVE_REGIONS), batches moved off a stopped region, work that
waits (never dropped) while no region can take it, and regions back after the cooldown.
Workers are recorded, not started: what a launcher does is tested in test_scrapyd.py
and, with local processes, in test_hydra_runs.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.models.regions import Region
from crawlers.models.run_events import RunEvent
from crawlers.services.controller.launchers import Handle, Launchers
from crawlers.services.controller.service import Controller
from tests.servers import RedisServer


class RecordingLauncher:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start(self, region: Region) -> Handle:
        self.started.append(region.name)
        return {"launcher": "local", "pid": len(self.started), "region": region.name}

    async def stop(self, handle: Handle) -> None:
        self.stopped.append(handle["region"])

    async def alive(self, handle: Handle) -> bool:
        return handle["region"] not in self.stopped

    async def close(self) -> None:
        return None


REGIONS = [
    {"name": "a", "neighbours": ["c", "d"], "start": True},
    {"name": "b", "neighbours": ["c", "d"], "start": True},
    {"name": "c", "neighbours": ["a", "b"]},
    {"name": "d", "neighbours": ["a", "b"]},
]


async def _until(check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return result


def test_regions_are_quarantined_replaced_capped_and_come_back(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_REDIS_URL": redis_server.url,
                "HYDRA_API_KEYS": "k",
                "HYDRA_REGIONS": json.dumps(REGIONS),
                "HYDRA_MAX_ACTIVE_REGIONS": 2,
                "HYDRA_REGION_COOLDOWN_SECONDS": 4,
                "HYDRA_WORKER_BATCH_SIZE": 2,
                "HYDRA_DISPATCH_RATE": 1000,
            }
        )
    )
    recorder = RecordingLauncher()
    launchers = Launchers(config)
    launchers.local = recorder  # type: ignore[assignment]
    controller = Controller(config, launchers=launchers)

    async def states() -> dict[str, str]:
        return {r["name"]: r["state"] for r in await controller.regions_view()}

    def stop(region: str) -> None:
        event = RunEvent(type="stopped", run_id="r", batch_id="b", region=region, remainder=1)
        redis_client.xadd("hydra:events", {"event": event.model_dump_json()})

    def queued(region: str) -> int:
        return int(redis_client.llen(f"hydra:prices:batches:{region}"))

    async def scenario() -> None:
        await controller.start()
        try:
            await _until(
                lambda: _eq(states(), {"a": "active", "b": "active", "c": "idle", "d": "idle"})
            )
            await _until(lambda: _true(sorted(recorder.started) == ["a", "b"]))
            # a is blocked: quarantined, its worker stopped, one neighbour grows (cap 2)
            redis_client.rpush(
                "hydra:prices:batches:a", json.dumps({"run_id": "r", "batch_id": "w", "ids": ["9"]})
            )
            stop("a")
            await _until(
                lambda: _eq(
                    states(), {"a": "quarantined", "b": "active", "c": "active", "d": "idle"}
                )
            )
            assert recorder.stopped == ["a"]
            await _until(lambda: _true("c" in recorder.started))
            # the batch waiting in a's queue went to an active region
            await _until(lambda: _true(queued("a") == 0 and queued("b") + queued("c") == 1))
            # b and then c are blocked: d grows; then nobody is left to take work
            stop("b")
            await _until(
                lambda: _eq(
                    states(), {"a": "quarantined", "b": "quarantined", "c": "active", "d": "active"}
                )
            )
            stop("c")
            stop("d")
            await _until(lambda: _all_quarantined(states()))
            run = await controller.create_run(["1", "2", "3", "4"])
            await asyncio.sleep(1.5)
            # the run's batches and the moved one wait for a region: none is dropped
            assert await controller.dispatcher.depth() == run["batches"] + 1
            assert sum(queued(r) for r in "abcd") == 0
            # after the cooldown, a starting region comes back and takes the work
            await _until(lambda: _true(sum(queued(r) for r in "abcd") >= 3), timeout=15)
            back = await states()
            assert back["a"] == "active", back
            assert await controller.dispatcher.depth() == 0
        finally:
            await controller.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _eq(actual: Awaitable[dict[str, str]], expected: dict[str, str]) -> bool:
    return await actual == expected


async def _all_quarantined(actual: Awaitable[dict[str, str]]) -> bool:
    return all(state == "quarantined" for state in (await actual).values())


async def _true(value: bool) -> bool:
    return value
