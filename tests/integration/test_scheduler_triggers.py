"""The scheduler's firing on a real state database with an injected clock: cron and
interval triggers fire at the right instants, two replicas fire each trigger once,
and a config changed while the scheduler runs is applied at the next tick. Jobs are
recorded, not launched (launching is tested in test_scheduler_service.py)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis
from scrapy.settings import Settings
from sqlalchemy import text

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.models.task_config import RetryPolicy, TaskConfig
from crawlers.services.scheduler.launcher import RunningJob
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.triggers import FakeClock
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


class RecordingLauncher:
    """Starts nothing: the jobs it is given end at once, successfully."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.jobs_dir = Path("/nonexistent")

    async def start(self, job_id: str, task: TaskConfig, args: dict[str, str]) -> RunningJob:
        self.started.append(job_id)
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()
        folder = Path(tempfile.mkdtemp(prefix="hydra-recorded-"))
        (folder / "summary.json").write_text('{"stats": {"finish_reason": "finished"}}')
        return RunningJob(job_id, task.name, process, folder)

    async def stop(self, job: RunningJob, *, kill_after: float = 30.0) -> None:
        return None


def _scheduler(url: str, clock: FakeClock, **settings: str) -> Scheduler:
    config = HydraConfig.from_settings(
        Settings({"HYDRA_DB_URL": url, "HYDRA_API_KEYS": "k", **settings})
    )
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
        await scheduler.set_paused("changing", True, "api")  # like POST /tasks/{name}/pause
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


def test_a_change_through_one_replica_reaches_another_by_the_config_topic(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Replica B works from its cache; A's API change must reach it at its next tick
    (not at the 30 s resync): B's fires follow the new schedule at once."""

    async def scenario() -> tuple[list[str], list[str]]:
        clock = FakeClock(_start())
        url = f"sqlite:///{tmp_path}/state.db"
        a, b = (_scheduler(url, clock, HYDRA_REDIS_URL=redis_server.url) for _ in range(2))
        for replica in (a, b):
            await replica.db.open()
            await replica.feeds.open()
        await a.put_task(_task("moving", {"every": "1h"}), "api")
        await b.configs.load()
        b.configs._synced = time.monotonic()  # no resync during the test: only the topic
        await a.set_paused("moving", True, "api")
        await b.tick()
        paused = b.configs.get("moving")
        await a.set_paused("moving", False, "api")
        await a.put_task(_task("moving", {"every": "10s"}), "api")
        await a.put_task(_task("fresh", {"every": "10s"}), "api")
        for _ in range(3):
            clock.advance(10)
            await b.tick()  # only B ticks: A made the changes, B must fire them
        fired = sorted({job.task_name for job in await b.store.jobs(limit=100)})
        states = [f"paused={paused.paused}" if paused else "missing"]
        for replica in (a, b):
            await replica.feeds.close()
            await replica.db.close()
        return states, fired

    states, fired = asyncio.run(scenario())
    assert states == ["paused=True"]
    assert fired == ["fresh", "moving"]  # the new schedule and the new task, from B


def test_a_dead_replicas_jobs_are_taken_over_queued_and_reaped_running(db_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(_start())
        dead, alive = _scheduler(db_url, clock), _scheduler(db_url, clock)
        for replica in (dead, alive):
            await replica.db.open()
        task = _task("manual", {"trigger": "external"}).model_copy(
            update={"retry": RetryPolicy(max_retries=1, backoff_seconds=5)}
        )
        await dead.put_task(task, "test")
        queued = await dead.trigger("manual")  # queued in the dead replica's memory only
        assert queued is not None
        # a job the dead replica was running, last heard of two minutes ago
        fired = clock.now() - timedelta(minutes=3)
        await dead.store.create_job("manual-stale", "manual", 0, 50, fired, fired)
        await dead.store.transition("manual-stale", "queued")
        await dead.store.transition(
            "manual-stale", "running", at=clock.now() - timedelta(minutes=2)
        )
        await alive.tick()
        started = alive.launcher.started  # type: ignore[attr-defined]
        assert started == [queued]  # taken over from the queue, run once, by the live one
        record = await alive.store.job(queued)
        assert record is not None and record.worker == alive.id
        stale = await alive.store.job("manual-stale")
        assert stale is not None and stale.state == "failed" and "no heartbeat" in stale.reason
        retries = [j for j in await alive.store.jobs(task_name="manual") if j.attempt == 1]
        assert len(retries) == 1 and retries[0].state == "pending"  # retried after back-off
        clock.advance(10)
        await dead.tick()  # the dead one wakes: nothing of it runs twice
        assert queued not in dead.launcher.started  # type: ignore[attr-defined]
        for replica in (dead, alive):
            await replica.db.close()

    asyncio.run(scenario())


def test_fires_missed_while_no_scheduler_ran_follow_each_tasks_policy(db_url: str) -> None:
    """A restarted scheduler loads where each schedule stood from the database: a
    ``run_once`` task catches up once for its missed fires, a ``skip`` task does not."""

    async def scenario() -> dict[str, int]:
        clock = FakeClock(_start())
        before = _scheduler(db_url, clock)
        await before.start(ticking=False)
        for name, missed in (("catch-up", "run_once"), ("skipper", "skip")):
            task = _task(name, {"every": "5m"}).model_copy(update={"missed": missed})
            await before.put_task(task, "test")
        now = clock.now()
        clock.set(now.replace(minute=now.minute - now.minute % 5) + timedelta(minutes=5))
        await before.tick()  # both fire once, on time
        await before.stop()
        clock.advance(17 * 60)  # three fires missed while no scheduler ran, the last 2 min ago
        after = _scheduler(db_url, clock)
        await after.start(ticking=False)
        await after.tick()
        counts = {
            name: len(await after.store.jobs(task_name=name)) for name in ("catch-up", "skipper")
        }
        await after.stop()
        return counts

    assert asyncio.run(scenario()) == {"catch-up": 2, "skipper": 1}


def test_finished_jobs_and_fires_past_the_retention_are_pruned_once_a_minute(
    db_url: str,
) -> None:
    async def scenario() -> None:
        clock = FakeClock(_start())
        # 0.01 days = 864 s
        scheduler = _scheduler(db_url, clock, HYDRA_SCHEDULER_JOB_RETENTION_DAYS="0.01")
        keeper = _scheduler(db_url, clock, HYDRA_SCHEDULER_JOB_RETENTION_DAYS="0")
        for replica in (scheduler, keeper):
            await replica.db.open()
        store = scheduler.store
        await scheduler.put_task(_task("manual", {"trigger": "external"}), "test")
        done = [await scheduler.trigger("manual") for _ in range(3)]
        for _ in range(4):
            clock.advance(1)
            await scheduler.tick()
        assert {job.state for job in await store.jobs(task_name="manual")} == {"succeeded"}
        # an old job still waiting, and old fires of a task
        await store.create_job("waiting", "manual", 0, 50, clock.now(), clock.now())
        for hours in (3, 2, 1):
            assert await store.claim_fire("hourly", clock.now() - timedelta(hours=hours), "x")
        clock.advance(1030)
        await keeper.tick()  # retention 0: keeps everything forever
        assert len(await store.jobs(task_name="manual")) == 4
        await scheduler.tick()
        left = await store.jobs(task_name="manual")
        assert [job.job_id for job in left] == ["waiting"]  # never a job not yet final
        for job_id in done:
            assert job_id is not None and await store.history(job_id) == []
        last_fires = await store.last_fires()
        assert last_fires["hourly"] == clock.now() - timedelta(hours=1, seconds=1030)
        with scheduler.db.transaction(write=False) as connection:
            count = connection.execute(text("SELECT count(*) FROM trigger_fires")).scalar_one()
        assert count == 1  # the last one stays: the trigger's window starts there
        # at most one pass a minute
        await store.create_job("late", "manual", 0, 50, clock.now(), clock.now())
        assert await store.transition("late", "cancelled", at=clock.now() - timedelta(days=1))
        clock.advance(30)
        await scheduler.tick()
        assert [job.job_id for job in await store.jobs(task_name="manual")] == ["late", "waiting"]
        clock.advance(31)
        await scheduler.tick()
        assert [job.job_id for job in await store.jobs(task_name="manual")] == ["waiting"]
        for replica in (scheduler, keeper):
            await replica.db.close()

    asyncio.run(scenario())
