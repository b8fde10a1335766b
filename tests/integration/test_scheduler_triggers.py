"""The scheduler's firing on a real state database with an injected clock: cron and
interval triggers fire at the right instants, two replicas fire each trigger once,
and a config changed while the scheduler runs is applied at the next tick. Jobs are
recorded, not launched (launching is tested in test_scheduler_service.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.models.task_config import TaskConfig
from crawlers.services.scheduler.launcher import RunningJob
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.triggers import FakeClock

pytestmark = pytest.mark.integration


class RecordingLauncher:
    """Starts nothing: the jobs it is given end at once, successfully."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start(self, job_id: str, task: TaskConfig, args: dict[str, str]) -> RunningJob:
        self.started.append(job_id)
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()
        return RunningJob(job_id, task.name, process, Path("/nonexistent"))

    async def stop(self, job: RunningJob, *, kill_after: float = 30.0) -> None:
        return None


def _scheduler(url: str, clock: FakeClock) -> Scheduler:
    config = HydraConfig.from_settings(Settings({"HYDRA_DB_URL": url, "HYDRA_API_KEYS": "k"}))
    scheduler = Scheduler(config, StateDB(url), clock=clock)
    scheduler.launcher = RecordingLauncher()  # type: ignore[assignment]
    return scheduler


def _task(name: str, schedule: dict[str, Any]) -> TaskConfig:
    return TaskConfig.model_validate(
        {"name": name, "spider": "prices", "schedule": schedule, "concurrency": "queue"}
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    url: str = request.getfixturevalue("postgres_database")
    return url


def _start() -> datetime:
    """Just after the next whole minute: after the configs' creation (the first window
    starts there, on the database's clock), and the fires are easy to name."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now + timedelta(minutes=1, seconds=1)


def test_two_replicas_fire_each_trigger_once_and_at_the_right_instants(db_url: str) -> None:
    async def scenario() -> list[Any]:
        clock = FakeClock(_start())
        one, two = _scheduler(db_url, clock), _scheduler(db_url, clock)
        for replica in (one, two):
            await replica.db.open()
        await one.put_task(_task("every-15s", {"every": "15s"}), "test")
        await one.put_task(
            _task("each-minute", {"cron": "* * * * *", "timezone": "Europe/Berlin"}), "test"
        )
        for _ in range(12):  # three minutes, in 15 s steps, both replicas ticking together
            clock.advance(15)
            await asyncio.gather(one.tick(), two.tick())
        jobs = await one.store.jobs(limit=500)
        for replica in (one, two):
            await replica.db.close()
        return jobs

    jobs = asyncio.run(scenario())
    fired = sorted((job.task_name, job.fired_at) for job in jobs)
    assert len(fired) == len(set(fired))  # never the same fire twice
    # every whole minute and every quarter minute of the three minutes, none skipped
    # (the first may be the boundary just before the clock's start: created before it)
    minutes = [at for name, at in fired if name == "each-minute"]
    assert len(minutes) in (3, 4) and all(at.second == 0 for at in minutes)
    assert all(b - a == timedelta(minutes=1) for a, b in pairwise(minutes))
    quarter = [at for name, at in fired if name == "every-15s"]
    assert len(quarter) in (12, 13) and all(at.second % 15 == 0 for at in quarter)
    assert all(b - a == timedelta(seconds=15) for a, b in pairwise(quarter))


def test_a_config_changed_while_running_is_applied_at_the_next_tick(db_url: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        clock = FakeClock(_start())
        scheduler = _scheduler(db_url, clock)
        await scheduler.db.open()
        await scheduler.put_task(_task("changing", {"every": "10s"}), "test")
        for _ in range(6):
            clock.advance(10)
            await scheduler.tick()
        before = len(await scheduler.store.jobs(task_name="changing"))
        await scheduler.put_task(_task("changing", {"every": "30s"}), "api")  # like PUT /tasks
        for _ in range(6):
            clock.advance(10)
            await scheduler.tick()
        after = len(await scheduler.store.jobs(task_name="changing"))
        await scheduler.store.set_paused("changing", True, "api")
        for _ in range(6):
            clock.advance(10)
            await scheduler.tick()
        paused = len(await scheduler.store.jobs(task_name="changing"))
        await scheduler.db.close()
        return before, after, paused

    before, after, paused = asyncio.run(scenario())
    assert before == 6  # every 10 s for a minute
    assert after - before == 2  # then every 30 s
    assert paused == after  # and nothing while paused
