"""The scheduler running jobs on two real Scrapyd nodes, replicas sharing Redis.

Jobs spread over both nodes and are judged from what they report on the status
stream (nodes write no summary the scheduler could read); a crawl SIGKILLed on
its node is failed by the heartbeat timeout and retried; when a whole node goes
down, its job is failed the same way and retried on the other node.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.models.task_config import TaskConfig
from crawlers.sandbox import SandboxServer
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.store import SchedulerJob
from tests.scrapyd_servers import (
    PROJECT,
    USERNAME,
    Scrapyd,
    assert_deployed,
    copy_project,
    deploy,
    start_scrapyd,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
STREAM = "hydra:jobs:status"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Scrapyd]]:
    password = "node-pass-7d1"
    servers: list[Scrapyd] = []
    try:
        for name in ("node-a", "node-b"):
            servers.append(start_scrapyd(tmp_path_factory.mktemp(name), password=password))
        copies = [copy_project(tmp_path_factory.mktemp("project")) for _ in servers]
        with ThreadPoolExecutor(len(servers)) as executor:
            for deployed in executor.map(deploy, servers, copies):
                assert_deployed(deployed)
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.kill_jobs()
            server.stop()


def _scheduler(tmp_path: Path, redis_url: str, servers: list[Scrapyd]) -> Scheduler:
    config = HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": "op",
                "HYDRA_REDIS_URL": redis_url,
                "HYDRA_SCHEDULER_NODES": ",".join(f"{s.url}#slots=2" for s in servers),
                "HYDRA_SCHEDULER_NODE_RETRY_SECONDS": 60,
                "HYDRA_SCRAPYD_PROJECT": PROJECT,
                "HYDRA_SCRAPYD_USERNAME": USERNAME,
                "HYDRA_SCRAPYD_PASSWORD": servers[0].password,
                "HYDRA_JOB_HEARTBEAT_SECONDS": 1,
                "HYDRA_SCHEDULER_HEARTBEAT_SECONDS": 6,
                "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
            }
        )
    )
    return Scheduler(config, StateDB(config.db_url), environ={})


def _task(name: str, tmp_path: Path, template: str, ids: int, **fields: Any) -> TaskConfig:
    body = {
        "name": name,
        "spider": "prices",
        "args": {"ids": ",".join(str(n) for n in range(ids)), "url_template": template},
        "settings": {
            "HYDRA_SINKS": f"jsonl://{tmp_path}/{name}.jsonl",
            "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        },
        "schedule": {"trigger": "external"},
        "concurrency": "queue",
        "max_parallel": 4,
        "expect": {"min_items": ids},
        **fields,
    }
    return TaskConfig.model_validate(body)


async def _until(check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.25)
    return found


async def _jobs(scheduler: Scheduler, task: str) -> list[SchedulerJob]:
    return sorted(await scheduler.store.jobs(task_name=task), key=lambda job: job.id)


def _crawl_pid(client: redis.Redis, job_id: str) -> int | None:
    """The pid of the job's crawl process, from its ``running`` report (host:pid)."""
    for _id, fields in client.xrange(STREAM):
        event = json.loads(fields["message"])
        if event["job_id"] == job_id and event["event"] == "running":
            return int(event["worker"].rsplit(":", 1)[1])
    return None


def test_jobs_spread_over_the_nodes_and_are_judged_from_their_reports(
    tmp_path: Path, nodes: list[Scrapyd], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(template: str) -> tuple[list[SchedulerJob], str]:
        scheduler = _scheduler(tmp_path, redis_server.url, nodes)
        await scheduler.start()
        for n in range(4):  # a task each: one JSONL file has one writer
            await scheduler.put_task(_task(f"spread-{n}", tmp_path, template, 4), "test")
            await scheduler.trigger(f"spread-{n}")

        async def ended() -> list[SchedulerJob] | None:
            jobs = [job for n in range(4) for job in await _jobs(scheduler, f"spread-{n}")]
            return jobs if len(jobs) == 4 and all(job.final for job in jobs) else None

        jobs = await _until(ended)
        assert scheduler.remote is not None
        log = await scheduler.remote.log(jobs[0].log_ref or "") or ""
        await scheduler.stop()
        return jobs, log

    with SandboxServer(delay_seconds=0.3) as sandbox:
        jobs, log = asyncio.run(scenario(sandbox.url_template))
    assert [job.state for job in jobs] == ["succeeded"] * 4, [job.reason for job in jobs]
    assert all(job.stats["item_scraped_count"] == 4 for job in jobs)  # from the stream
    assert {job.worker for job in jobs} == {f"scrapyd {node.url}" for node in nodes}
    assert "Spider closed (finished)" in log, (jobs[0].log_ref, log[-300:])  # the node log
    assert not (tmp_path / "jobs").exists()  # nothing ran locally


def test_a_crawl_killed_on_its_node_fails_by_heartbeat_and_is_retried(
    tmp_path: Path, nodes: list[Scrapyd], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async def scenario(template: str) -> list[SchedulerJob]:
        scheduler = _scheduler(tmp_path, redis_server.url, nodes)
        await scheduler.start()
        task = _task("killed", tmp_path, template, 12, retry={"max_retries": 1})
        await scheduler.put_task(task, "test")
        job_id = await scheduler.trigger("killed")
        assert job_id is not None

        async def pid() -> int | None:
            return _crawl_pid(redis_client, job_id)

        os.kill(await _until(pid), signal.SIGKILL)

        async def retried() -> list[SchedulerJob] | None:
            jobs = await _jobs(scheduler, "killed")
            return jobs if len(jobs) == 2 and all(job.final for job in jobs) else None

        jobs = await _until(retried)
        await scheduler.stop()
        return jobs

    with SandboxServer(delay_seconds=0.5) as sandbox:
        first, retry = asyncio.run(scenario(sandbox.url_template))
    assert first.state == "failed" and "no heartbeat" in first.reason
    assert retry.attempt == 1 and retry.state == "succeeded", retry.reason


def test_a_job_survives_its_node_going_down(
    tmp_path: Path, nodes: list[Scrapyd], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Last in this module: a node stays down."""

    def scenario(template: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        scheduler = _scheduler(tmp_path, redis_server.url, nodes)
        app = create_app(scheduler.config, scheduler)
        with TestClient(app) as api:  # starts the scheduler in the app's loop
            api.headers["X-API-Key"] = "op"
            answer = api.put(
                "/tasks/survivor",
                json=_task("survivor", tmp_path, template, 12, retry={"max_retries": 1})
                .model_dump(mode="json", exclude={"name"}),
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            job_id = api.post("/tasks/survivor/trigger").json()["job_id"]
            deadline = time.monotonic() + 60
            while _crawl_pid(redis_client, job_id) is None:
                assert time.monotonic() < deadline
                time.sleep(0.25)
            worker = api.get(f"/jobs/{job_id}").json()["worker"]
            doomed = next(node for node in nodes if worker == f"scrapyd {node.url}")
            doomed.kill_jobs()  # the whole node goes: its crawls and Scrapyd itself
            doomed.stop()
            deadline = time.monotonic() + 90
            while True:
                jobs = api.get("/jobs", params={"task": "survivor"}).json()
                if len(jobs) == 2 and all(j["finished_at"] for j in jobs):
                    break
                assert time.monotonic() < deadline, jobs
                time.sleep(0.25)
            shown = api.get("/nodes").json()
        return sorted(jobs, key=lambda job: job["id"]), shown

    with SandboxServer(delay_seconds=0.5) as sandbox:
        (first, retry), shown = scenario(sandbox.url_template)
    assert first["state"] == "failed" and "no heartbeat" in first["reason"]
    assert retry["state"] == "succeeded" and retry["worker"] != first["worker"]
    down = [node for node in shown if not node["up"]]
    assert len(down) == 1 and f"scrapyd {down[0]['url']}" == first["worker"]
    assert nodes[0].password not in json.dumps(shown)
