"""The scheduler's streams on real servers: a job reports running, progress and its end
(embedded: a topic file); a replica judges a job it did not start from its reported end;
the trigger stream starts tasks, dead-letters bad messages and never runs one twice."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.models.task_config import TaskConfig
from crawlers.sandbox import SandboxServer
from crawlers.services.scheduler import feeds
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.triggers import FakeClock
from tests.integration.test_scheduler_triggers import RecordingLauncher
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, **settings: Any) -> HydraConfig:
    return HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": "k",
                "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
                "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
                **settings,
            }
        )
    )


def _task(name: str, **fields: Any) -> TaskConfig:
    body = {"name": name, "spider": "prices", "schedule": {"trigger": "external"}, **fields}
    return TaskConfig.model_validate(body)


def test_a_local_job_reports_running_progress_and_its_end(tmp_path: Path) -> None:
    async def scenario(template: str) -> tuple[list[int], str]:
        config = _config(tmp_path, HYDRA_JOB_HEARTBEAT_SECONDS=0.3)
        scheduler = Scheduler(config, StateDB(config.db_url))
        await scheduler.start()
        task = _task(
            "slow",
            args={"ids": ",".join(str(n) for n in range(30)), "url_template": template},
            settings={"HYDRA_SINKS": f"jsonl://{tmp_path}/rows.jsonl"},
            expect={"min_items": 30},
        )
        await scheduler.put_task(task, "test")
        job_id = await scheduler.trigger("slow")
        assert job_id is not None
        progress: list[int] = []  # items the job's stored stats showed while it ran
        deadline = time.monotonic() + 90
        while (record := await scheduler.store.job(job_id)) is not None and not record.final:
            assert time.monotonic() < deadline, "the job did not end"
            if record.state == "running":
                progress.append(int(record.stats.get("item_scraped_count", 0)))
            await asyncio.sleep(0.2)
        await scheduler.stop()
        assert record is not None
        return progress, record.state

    with SandboxServer(delay_seconds=0.1) as sandbox:
        progress, state = asyncio.run(scenario(sandbox.url_template))
    assert state == "succeeded"
    assert any(0 < items < 30 for items in progress)  # progress arrived while it ran
    lines = (tmp_path / "topics" / "hydra_jobs_status.jsonl").read_text().splitlines()
    events = [json.loads(line)["message"] for line in lines]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "running" and kinds[-1] == "finished" and "progress" in kinds
    assert events[-1]["stats"]["item_scraped_count"] == 30
    assert events[-1]["finish_reason"] == "finished"


def _event(job_id: str, event: str, **stats: Any) -> str:
    body = {"job_id": job_id, "event": event, "at": datetime.now(UTC).isoformat()}
    if event == "finished":
        body["finish_reason"] = "finished"
    return json.dumps({**body, "stats": stats})


def _redis_scheduler(tmp_path: Path, url: str, clock: FakeClock) -> Scheduler:
    config = _config(tmp_path, HYDRA_REDIS_URL=url, HYDRA_SCHEDULER_HEARTBEAT_SECONDS=60)
    scheduler = Scheduler(config, StateDB(config.db_url), clock=clock)
    scheduler.launcher = RecordingLauncher()  # type: ignore[assignment]
    return scheduler


async def _running_elsewhere(scheduler: Scheduler, job_id: str, started: datetime) -> None:
    await scheduler.store.create_job(job_id, "judged", 0, 50, started, started)
    await scheduler.store.transition(job_id, "queued")
    await scheduler.store.transition(job_id, "running", at=started, worker="another-replica")


def test_a_replica_judges_jobs_it_did_not_start_from_their_reports(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    stream = "hydra:jobs:status"

    async def scenario() -> dict[str, Any]:
        clock = FakeClock(datetime.now(UTC))
        scheduler = _redis_scheduler(tmp_path, redis_server.url, clock)
        await scheduler.start(ticking=False)
        await scheduler.put_task(_task("judged", expect={"min_items": 1}), "test")
        started = clock.now()
        for job_id in ("good", "empty", "alive", "silent"):
            await _running_elsewhere(scheduler, job_id, started)
        redis_client.xadd(stream, {"message": "not json {"})
        redis_client.xadd(stream, {"message": json.dumps({"job_id": "good", "event": "?"})})
        redis_client.xadd(stream, {"message": _event("good", "finished", item_scraped_count=3)})
        redis_client.xadd(stream, {"message": _event("empty", "finished", item_scraped_count=0)})
        clock.advance(50)
        redis_client.xadd(stream, {"message": _event("alive", "progress", item_scraped_count=7)})
        await scheduler.tick()
        clock.advance(30)  # 80 s after the start: only "alive" was heard of in the last 60 s
        await scheduler.tick()
        states = {}
        for job_id in ("good", "empty", "alive", "silent"):
            record = await scheduler.store.job(job_id)
            assert record is not None
            states[job_id] = (record.state, record.reason, record.stats.get("item_scraped_count"))
        pending = redis_client.xpending(stream, "hydra-scheduler")["pending"]
        await scheduler.stop()
        return {"states": states, "pending": pending}

    seen = asyncio.run(scenario())
    states = seen["states"]
    assert states["good"][:1] == ("succeeded",) and states["good"][2] == 3
    assert states["empty"][0] == "failed" and "0 items" in states["empty"][1]
    assert states["alive"] == ("running", "", 7)  # its heartbeat kept it alive
    assert states["silent"][0] == "failed" and "no heartbeat" in states["silent"][1]
    assert seen["pending"] == 0  # every entry acknowledged, the bad ones too
    letters = [json.loads(raw) for raw in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert [letter["payload"] for letter in letters][:1] == ["not json {"]
    assert len(letters) == 2 and all(letter["source"] == stream for letter in letters)


def test_the_trigger_stream_runs_tasks_once_and_dead_letters_bad_messages(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = "hydra:scheduler:triggers"

    async def scenario() -> tuple[list[Any], list[str]]:
        clock = FakeClock(datetime.now(UTC))
        crashed = _redis_scheduler(tmp_path, redis_server.url, clock)
        taker = _redis_scheduler(tmp_path, redis_server.url, clock)
        for replica in (crashed, taker):
            await replica.start(ticking=False)
        await taker.put_task(_task("on-demand"), "test")
        await crashed.configs.load()
        message = {"task": "on-demand", "args": {"ids": "5,6"}}
        redis_client.xadd(stream, {"message": json.dumps(message)})

        async def crash(stream: str, entries: list[feeds.Entry]) -> None:
            raise SystemExit("the replica dies before it acknowledges")

        crashed.feeds.done = crash  # type: ignore[method-assign]
        with pytest.raises(SystemExit):
            await crashed.intake.take_triggers(clock.now())  # the job is created, not acknowledged
        redis_client.xadd(stream, {"message": json.dumps({"task": "nope"})})
        redis_client.xadd(stream, {"message": json.dumps({"task": "on-demand", "x": 1})})
        monkeypatch.setattr(feeds, "CLAIM_IDLE_MS", 0)
        await taker.tick()  # takes the dead replica's entries over
        await taker.tick()
        clock.advance(1)
        await taker.tick()
        jobs = await taker.store.jobs(task_name="on-demand")
        started = list(taker.launcher.started)  # type: ignore[attr-defined]
        crashed.feeds.done = taker.feeds.done  # type: ignore[method-assign]
        for replica in (crashed, taker):
            await replica.stop()
        return jobs, started

    jobs, started = asyncio.run(scenario())
    assert len(jobs) == 1 and started == [jobs[0].job_id]  # run once, by the live replica
    letters = [json.loads(raw) for raw in redis_client.lrange("hydra:deadletter", 0, -1)]
    assert sorted(letter["error"][:7] for letter in letters) == ["no task", "x: Extr"]
    assert all(letter["reason"] == "invalid_message" for letter in letters)
    assert redis_client.xpending(stream, "hydra-scheduler")["pending"] == 0


def test_args_of_a_streamed_trigger_reach_the_job(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario() -> dict[str, str] | None:
        clock = FakeClock(datetime.now(UTC) - timedelta(seconds=5))
        scheduler = _redis_scheduler(tmp_path, redis_server.url, clock)
        await scheduler.start(ticking=False)
        seen: dict[str, dict[str, str]] = {}
        recording = scheduler.launcher

        async def start(job_id: str, task: TaskConfig, args: dict[str, str]) -> Any:
            seen[job_id] = args
            return await recording.start(job_id, task, args)

        scheduler.launcher.start = start  # type: ignore[method-assign]
        await scheduler.put_task(_task("with-args", args={"ids": "1"}), "test")
        body = {"task": "with-args", "args": {"ids": "7,8"}}
        redis_client.xadd("hydra:scheduler:triggers", {"message": json.dumps(body)})
        await scheduler.tick()
        await scheduler.stop()
        return next(iter(seen.values()), None)

    assert asyncio.run(scenario()) == {"ids": "7,8"}
