"""The console's runs and regions pages on a real Redis, filled by a real controller
(in process, workers recorded rather than started): counters, the progress chart drawn
from the run's samples, region states, the graph, the regrowth timeline, escaping;
and the run progress series itself (one sample a second at most, thinned when full)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.models.regions import Region
from crawlers.models.run_events import RunEvent
from crawlers.services.controller.launchers import Handle, Launchers
from crawlers.services.controller.runs import RunStore
from crawlers.services.controller.service import Controller
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.service import Scheduler
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
KEY = "op-key-1"
REGIONS = [
    {"name": "a", "neighbours": ["c", "d"], "start": True},
    {"name": "b", "neighbours": ["c", "d"], "start": True},
    {"name": "c", "neighbours": ["a", "b"]},
    {"name": "d", "neighbours": ["a", "b"]},
]
EVIL = "<script>alert(1)</script>"


class RecordingLauncher:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def start(self, region: Region) -> Handle:
        self.started.append(region.name)
        return {"launcher": "local", "pid": 4000 + len(self.started), "region": region.name}

    async def stop(self, handle: Handle) -> None:
        return None

    async def alive(self, handle: Handle) -> bool:
        return True

    async def close(self) -> None:
        return None


def _config(tmp_path: Path, redis_url: str) -> HydraConfig:
    return HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": KEY,
                "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                "HYDRA_REDIS_URL": redis_url,
                "HYDRA_REGIONS": json.dumps(REGIONS),
                "HYDRA_MAX_ACTIVE_REGIONS": 3,
                "HYDRA_REGION_COOLDOWN_SECONDS": 600,
                "HYDRA_WORKER_BATCH_SIZE": 3,
                "HYDRA_DISPATCH_RATE": 1000,
            }
        )
    )


def _console(config: HydraConfig) -> Iterator[TestClient]:
    scheduler = Scheduler(config, StateDB(config.db_url))
    with TestClient(create_app(config, scheduler)) as client:
        answer = client.post("/ui/login", data={"api_key": KEY}, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        yield client


async def _until(check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return result


def _hydra(config: HydraConfig, client: redis.Redis) -> str:
    """A controller grows the hydra: a run whose IDs are stored and failed in two steps
    a second apart, then region ``a`` stopped (quarantined; c and d grow). The run's id."""
    launchers = Launchers(config)
    launchers.local = RecordingLauncher()  # type: ignore[assignment]
    controller = Controller(config, launchers=launchers)
    run_id = ""

    def send(kind: str, region: str, ids: list[str], **more: Any) -> None:
        event = RunEvent(type=kind, run_id=run_id, batch_id="b000000", region=region, ids=ids,
                         **more)  # fmt: skip
        client.xadd("hydra:events", {"event": event.model_dump_json()})

    async def counts(expected: tuple[int, int, int]) -> bool:
        run = await controller.runs.get(run_id)
        return run is not None and (run["succeeded"], run["failed"], run["pending"]) == expected

    async def states() -> dict[str, str]:
        return {r["name"]: r["state"] for r in await controller.regions_view()}

    async def scenario() -> str:
        nonlocal run_id
        await controller.start()
        try:
            await _until(lambda: _is(states(), {"a": "active", "b": "active", "c": "idle",
                                                "d": "idle"}))  # fmt: skip
            run_id = str((await controller.create_run([str(n) for n in range(1, 7)]))["run_id"])
            send("stored", "a", ["1", "2"])
            await _until(lambda: counts((2, 0, 4)))
            await asyncio.sleep(1.1)  # the next change is a new sample
            send("stored", "b", ["3"])
            send("failed", "b", ["4"], reason="HTTP 404")
            await _until(lambda: counts((3, 1, 2)))
            send("stopped", "a", [], remainder=2, reason=f"HTTP 403 {EVIL}")
            await _until(lambda: _is(states(), {"a": "quarantined", "b": "active",
                                                "c": "active", "d": "active"}))  # fmt: skip
            return run_id
        finally:
            await controller.stop()

    return asyncio.run(asyncio.wait_for(scenario(), 60))


async def _is(actual: Awaitable[dict[str, str]], expected: dict[str, str]) -> bool:
    return await actual == expected


@pytest.fixture
def hydra(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[tuple[TestClient, str]]:
    config = _config(tmp_path, redis_server.url)
    run_id = _hydra(config, redis_client)
    yield from ((client, run_id) for client in _console(config))


def _points(svg: str, series: str) -> list[tuple[float, float]]:
    found = re.search(rf'<polyline class="series" data-series="{series}" points="([^"]+)"', svg)
    assert found, f"no {series} line in {svg[:400]}"
    return [(float(x), float(y)) for x, y in (p.split(",") for p in found[1].split())]


def test_a_run_page_shows_its_counters_and_a_chart_of_its_samples(
    hydra: tuple[TestClient, str], redis_client: redis.Redis
) -> None:
    client, run_id = hydra
    listing = client.get("/ui/runs")
    assert listing.status_code == 200
    row = re.search(rf'<tr data-run="{run_id}">(.*?)</tr>', listing.text, re.S)
    assert row and f'href="/ui/runs/{run_id}"' in row[1]
    assert "<td>6</td><td>3</td><td>1</td><td>2</td>" in row[1]  # ids, succeeded, failed, pending

    page = client.get(f"/ui/runs/{run_id}")
    assert page.status_code == 200
    for field, value in (("ids", 6), ("succeeded", 3), ("failed", 1), ("pending", 2)):
        assert f'<dd id="run-{field}">{value}</dd>' in page.text
    assert '<meta http-equiv="refresh"' in page.text  # still running: 2 pending
    regions = re.search(r'<table class="grid" id="run-regions">(.*?)</table>', page.text, re.S)
    assert regions and '<tr data-region="a"><td>a</td><td>2</td><td>0</td></tr>' in regions[1]
    assert '<tr data-region="b"><td>b</td><td>1</td><td>1</td></tr>' in regions[1]

    samples = [
        json.loads(s) for s in redis_client.lrange(f"hydra:run:{{{run_id}}}:progress", 0, -1)
    ]
    assert [(s["succeeded"], s["failed"], s["pending"]) for s in samples] == [
        (0, 0, 6), (2, 0, 4), (3, 1, 2),
    ]  # fmt: skip
    chart = page.text[page.text.index('<div id="progress">') :]
    succeeded, failed, pending = (
        _points(chart, name) for name in ("succeeded", "failed", "pending")
    )
    assert len(succeeded) == len(failed) == len(pending) == 3
    assert [x for x, _ in succeeded] == sorted(x for x, _ in succeeded)  # time runs right
    zero, six = succeeded[0][1], pending[0][1]  # the y of 0 and of 6 IDs
    for line, values in ((succeeded, (0, 2, 3)), (failed, (0, 0, 1)), (pending, (6, 4, 2))):
        assert [round((zero - y) / (zero - six) * 6, 1) for _, y in line] == list(values)


def test_the_regions_page_shows_states_the_graph_and_the_timeline(
    hydra: tuple[TestClient, str],
) -> None:
    client, run_id = hydra
    page = client.get("/ui/regions")
    assert page.status_code == 200
    for name, state in (("a", "quarantined"), ("b", "active"), ("c", "active"), ("d", "active")):
        row = re.search(rf'<tr data-region="{name}">(.*?)</tr>', page.text, re.S)
        assert row and f'<td class="state state-{state}">{state}</td>' in row[1], name
    row_a = re.search(r'<tr data-region="a">(.*?)</tr>', page.text, re.S)
    assert row_a and "s left)" in row_a[1] and "local pid" in row_a[1]  # quarantine, stopped worker

    graph = page.text[page.text.index('<div id="graph">') :]
    marks = re.findall(r'<g class="region region-(\w+)" data-region="(\w)"', graph)
    nodes = {name: state for state, name in marks}
    assert nodes == {"a": "quarantined", "b": "active", "c": "active", "d": "active"}
    edges = set(re.findall(r'data-edge="(\w) (\w)"', graph))
    assert edges == {("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")}

    timeline = page.text[page.text.index('<table class="grid" id="timeline">') :]
    kinds = re.findall(r'<tr data-kind="(\w+)">', timeline)
    # newest first: a's quarantine, its worker stopped, c and d grown, their workers
    assert kinds.index("quarantined") > kinds.index("activated")
    quarantine = re.search(r'<tr data-kind="quarantined">(.*?)</tr>', timeline, re.S)
    assert quarantine and "<td>a</td>" in quarantine[1] and "batch b000000" in quarantine[1]
    assert f'href="/ui/runs/{run_id}"' in quarantine[1]
    assert "HTTP 403 &lt;script&gt;alert(1)&lt;/script&gt;" in quarantine[1]
    assert EVIL not in page.text
    grown = re.findall(
        r'<tr data-kind="activated">.*?<td>(\w)</td>.*?in place of (\w)', timeline, re.S
    )
    assert sorted(grown) == [("c", "a"), ("d", "a")]
    assert "worker_started" in kinds and "worker_stopped" in kinds


def test_names_are_escaped_and_bad_or_missing_runs_are_refused(
    hydra: tuple[TestClient, str], redis_server: RedisServer
) -> None:
    client, _ = hydra

    async def evil_run() -> None:
        async with redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True) as r:
            await RunStore(r).create(EVIL, ["x"], 1)

    asyncio.run(evil_run())
    listing = client.get("/ui/runs")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text and EVIL not in listing.text
    assert client.get("/ui/runs/run-20260101-000000-deadbeef").status_code == 404
    assert client.get("/ui/runs/%3Cscript%3E").status_code == 422
    assert client.get("/ui/runs/" + "r" * 129).status_code == 422


def test_without_redis_the_pages_say_what_is_missing(tmp_path: Path) -> None:
    for client in _console(_config(tmp_path, "")):
        for path in ("/ui/runs", "/ui/runs/run-1", "/ui/regions"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert 'id="no-redis"' in page.text and "HYDRA_REDIS_URL" in page.text


def test_progress_is_sampled_once_a_second_and_thinned_when_full(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])  # the controller's clock

    async def scenario() -> tuple[list[dict[str, float]], dict[str, float]]:
        async with redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True) as r:
            store = RunStore(r)
            store.progress_cap = 10
            await store.create("r1", [str(n) for n in range(40)], 1)
            await store.mark("r1", ["0"], "ok", "a")  # a first change: a sample
            clock[0] += 0.3
            await store.mark("r1", ["1"], "f", "a")  # within the second: rewrites it
            first = await store.progress("r1")
            assert [(s["t"], s["succeeded"], s["failed"]) for s in first] == [
                (1000.0, 0, 0), (1000.3, 1, 1),
            ]  # fmt: skip
            for n in range(2, 40):
                clock[0] += 1
                await store.mark("r1", [str(n)], "ok", "a")
            run = await store.get("r1")
            assert run is not None and run["status"] == "finished"
            return await store.progress("r1"), run

    samples, run = asyncio.run(scenario())
    assert 5 <= len(samples) <= 10
    assert samples[0] == {"t": 1000.0, "succeeded": 0, "failed": 0, "pending": 40}  # the start
    assert samples[-1] == {"t": clock[0], "succeeded": 39, "failed": 1, "pending": 0}  # the end
    times = [s["t"] for s in samples]
    assert times == sorted(times)
    assert int(redis_client.hget("hydra:run:{r1}", "progress_every") or 0) >= 2
    assert run["succeeded"] == 39  # the counters themselves are untouched by sampling
