"""End to end through a real Scrapyd: basic auth, `scrapyd-deploy env`, and a `prices` job.

Scrapyd runs from a temp dir holding a copy of scrapyd/scrapyd.conf, without the repo on
PYTHONPATH, so the job can only import Hydra from the egg that scrapyd-deploy uploaded
(see tests/scrapyd_servers.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.models.regions import Region
from crawlers.services.controller.launchers import ScrapydLauncher
from tests.conftest import read_jsonl, read_summary
from tests.scrapyd_servers import (
    EGG_MARKER,
    PROJECT,
    ROOT,
    USERNAME,
    Scrapyd,
    assert_deployed,
    clean_env,
    copy_project,
    deploy,
    start_scrapyd,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 90.0
REGION = "eu"
BATCHES = f"hydra:prices:batches:{REGION}"  # the region's queue
LEASES = f"{{{BATCHES}}}:leases"  # its leased messages
HELD = f"{{{BATCHES}}}:held"  # their payloads
READY = f"{{{BATCHES}}}:ready"  # messages given back, served before BATCHES
EVENTS = "hydra:events"
ROWS = "rows.jsonl"  # in the regional Scrapyd's working dir


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapyd]:
    server = start_scrapyd(tmp_path_factory.mktemp("scrapyd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files scrapyd-deploy needs, copied, so that its build leftovers stay out of the repo."""
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def deployed(scrapyd: Scrapyd, project_copy: Path) -> subprocess.CompletedProcess[str]:
    """`scrapyd-deploy env` against the test's Scrapyd (run once, checked by the tests)."""
    return deploy(scrapyd, project_copy)


def test_api_requires_basic_auth(scrapyd: Scrapyd) -> None:
    status, _ = scrapyd.request("daemonstatus.json", auth=False)
    assert status == 401
    status, body = scrapyd.request("daemonstatus.json")
    assert status == 200, body
    assert body["status"] == "ok"


def test_deploy_env_target(scrapyd: Scrapyd, deployed: subprocess.CompletedProcess[str]) -> None:
    assert_deployed(deployed)
    status, projects = scrapyd.request("listprojects.json")
    assert status == 200, projects
    assert PROJECT in projects["projects"], projects
    status, spiders = scrapyd.request("listspiders.json", query={"project": PROJECT})
    assert status == 200 and spiders.get("status") == "ok", spiders
    assert "prices" in spiders["spiders"], spiders


def test_prices_job_runs_from_the_egg(
    scrapyd: Scrapyd,
    deployed: subprocess.CompletedProcess[str],
    sandbox: Any,
    tmp_path: Path,
) -> None:
    assert_deployed(deployed)
    ids = [str(number) for number in range(1, 11)]
    sink = tmp_path / "out.jsonl"
    deadletter = tmp_path / "dl.jsonl"
    summary_path = tmp_path / "summary.json"
    status, scheduled = scrapyd.request(
        "schedule.json",
        [
            ("project", PROJECT),
            ("spider", "prices"),
            ("ids", ",".join(ids)),
            ("url_template", sandbox.url_template),
            ("setting", f"HYDRA_SINKS=jsonl://{sink}"),
            ("setting", f"HYDRA_DEADLETTER_PATH={deadletter}"),
            ("setting", f"HYDRA_SUMMARY_PATH={summary_path}"),
        ],
    )
    assert status == 200 and scheduled.get("status") == "ok", scheduled
    jobid: str = scheduled["jobid"]

    jobs: dict[str, Any] = {}
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status, jobs = scrapyd.request("listjobs.json", query={"project": PROJECT})
        assert status == 200, jobs
        if any(job["id"] == jobid for job in jobs["finished"]):
            break
        time.sleep(0.2)
    else:
        pytest.fail(
            f"job {jobid} not finished within {JOB_TIMEOUT:.0f} s: {jobs}\n"
            f"job log:\n{scrapyd.job_log(jobid)}\nscrapyd log:\n{scrapyd.server_log()}"
        )

    log = scrapyd.job_log(jobid)
    context = f"job log:\n{log}"
    assert f"'LOGSTATS_INTERVAL': {EGG_MARKER!r}" in log, f"job did not run the egg\n{context}"
    rows = read_jsonl(sink)
    assert sorted(row["id"] for row in rows) == sorted(ids), f"sink rows: {rows}\n{context}"
    for row in rows:
        assert isinstance(row["data"], dict) and "price" in row["data"], f"{row}\n{context}"
    assert summary_path.exists(), f"no summary written\n{context}"
    summary = read_summary(summary_path)
    assert summary["reason"] == "finished", f"{summary}\n{context}"
    assert read_jsonl(deadletter) == [], f"dead letters written\n{context}"


def test_start_script_refuses_without_password(tmp_path: Path) -> None:
    process = subprocess.run(
        [str(ROOT / "scrapyd" / "start.sh")],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert process.returncode == 2, process.stderr
    assert "SCRAPYD_PASSWORD" in process.stderr
    assert process.stdout == ""


# -- the controller's ScrapydLauncher against a region's node -----------------------------


@pytest.fixture(scope="module")
def regional_sandbox() -> Iterator[Any]:
    from crawlers.sandbox import SandboxServer

    with SandboxServer() as server:
        yield server


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[Any]:
    """Answers after 2 s: a batch fetched from it is in flight when its worker stops."""
    from crawlers.sandbox import SandboxServer

    with SandboxServer(delay_seconds=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def regional_scrapyd(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    regional_sandbox: Any,
    project_copy: Path,
) -> Iterator[Scrapyd]:
    """A region's node: a Scrapyd whose own environment holds the worker's settings.

    HYDRA_REDIS_URL among them, as on a real node, since the launcher passes jobs nothing
    but HYDRA_REGION. Its jobs write their rows to ``<workdir>/rows.jsonl``.
    """
    workdir = tmp_path_factory.mktemp("regional-scrapyd")
    server = start_scrapyd(
        workdir,
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_PRICE_URL_TEMPLATE=regional_sandbox.url_template,
        HYDRA_SINKS=f"jsonl://{workdir / ROWS}",
        HYDRA_QUEUE_LEASE_SECONDS="3",
        HYDRA_ACK_INTERVAL_SECONDS="0.2",
    )
    try:
        assert_deployed(deploy(server, project_copy))
        yield server
    finally:
        server.kill_jobs()  # a worker runs until stopped: never leave one behind
        server.stop()


def launcher_config(username: str, password: str) -> HydraConfig:
    return HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_SCRAPYD_USERNAME": username,
                "HYDRA_SCRAPYD_PASSWORD": password,
                "HYDRA_SCRAPYD_PROJECT": PROJECT,
            }
        )
    )


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    context: Callable[[], str],
    timeout: float = JOB_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {timeout:.0f} s: {what}\n{context()}")


def stored_events(client: redis.Redis, run_id: str) -> list[dict[str, Any]]:
    entries: list[tuple[str, dict[str, str]]] = client.xrange(EVENTS)  # type: ignore[assignment]
    events = [json.loads(fields["event"]) for _, fields in entries]
    return [event for event in events if event["type"] == "stored" and event["run_id"] == run_id]


def test_scrapyd_launcher_starts_and_stops_a_regional_worker(
    regional_scrapyd: Scrapyd,
    slow_sandbox: Any,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    node = regional_scrapyd
    run_id, ids = "r", ["1", "2", "3"]
    config = launcher_config(USERNAME, node.password)
    assert config.region_queue_key(REGION) == BATCHES
    region = Region(name=REGION, scrapyd=node.url)
    redis_client.rpush(BATCHES, json.dumps({"run_id": run_id, "batch_id": "b1", "ids": ids}))

    async def scenario() -> str:
        launcher = ScrapydLauncher(config)
        try:
            handle = await launcher.start(region)
            assert handle["launcher"] == "scrapyd" and handle["node"] == node.url, handle
            jobid = handle["job"]
            assert isinstance(jobid, str) and jobid, handle

            def context() -> str:
                return (
                    f"jobs: {node.jobs()}\njob log:\n{node.job_log(jobid)}\n"
                    f"scrapyd log:\n{node.server_log()}"
                )

            await eventually(lambda: launcher.alive(handle), f"job {jobid} alive", context)

            # the job consumed eu's queue with the node's Redis, sandbox and sink
            def rows() -> list[dict[str, Any]]:
                return [row for row in read_jsonl(node.workdir / ROWS) if row["run_id"] == run_id]

            await eventually(lambda: len(rows()) >= len(ids), "the batch's rows stored", context)
            assert sorted(row["id"] for row in rows()) == ids, rows()
            assert {row["region"] for row in rows()} == {REGION}, rows()

            def stored() -> set[str]:
                return {i for event in stored_events(redis_client, run_id) for i in event["ids"]}

            await eventually(lambda: stored() == set(ids), "`stored` events for 1,2,3", context)
            events = stored_events(redis_client, run_id)
            assert {event["region"] for event in events} == {REGION}, events

            # the Redis URL reached the job through the node's environment, not as an argument
            started = [
                line
                for line in node.log_path.read_text(encoding="utf-8").splitlines()
                if "Process started:" in line and jobid in line
            ]
            assert len(started) == 1, context()
            assert f"'HYDRA_REGION={REGION}'" in started[0], started[0]
            settings_passed = [
                word for word in started[0].replace("'", " ").split() if "HYDRA_" in word
            ]
            assert settings_passed == [f"HYDRA_REGION={REGION}"], started[0]
            for shown in (started[0], json.dumps(node.jobs())):
                assert redis_server.url not in shown and "redis://" not in shown, shown

            # a second batch, still in flight (leased) when the worker is stopped
            slow = {"run_id": run_id, "batch_id": "b2", "ids": ["4", "5"]}
            slow["url_template"] = slow_sandbox.url_template
            redis_client.rpush(BATCHES, json.dumps(slow))
            await eventually(lambda: redis_client.zcard(LEASES) == 1, "b2 leased", context)

            # a graceful stop: SIGINT through cancel.json
            await launcher.stop(handle)

            def finished() -> bool:
                return any(job["id"] == jobid for job in node.jobs()["finished"])

            await eventually(finished, f"job {jobid} finished after cancel.json", context)
            assert not await launcher.alive(handle)
            ended = [
                line
                for line in node.log_path.read_text(encoding="utf-8").splitlines()
                if "Process " in line and jobid in line and "Process started:" not in line
            ]
            assert len(ended) == 1 and "Process finished:" in ended[0], context()
            return node.job_log(jobid)
        finally:
            await launcher.close()

    log = asyncio.run(scenario())
    assert f"'LOGSTATS_INTERVAL': {EGG_MARKER!r}" in log, f"job did not run the egg\n{log}"
    assert "Received SIGINT, shutting down gracefully" in log, log
    assert "Spider closed (shutdown)" in log, log
    assert "Received SIGINT twice" not in log, log
    # nothing stays leased: b1 was acked; of b2, what was fetched (the answer in flight at
    # SIGINT) was stored and the rest went back whole to the region's queue
    assert redis_client.zcard(LEASES) == 0, redis_client.zrange(LEASES, 0, -1)
    assert redis_client.hlen(HELD) == 0, redis_client.hgetall(HELD)
    assert redis_client.llen(BATCHES) == 0
    envelopes: list[str] = redis_client.lrange(READY, 0, -1)  # type: ignore[assignment]
    given_back = [json.loads(envelope.split("\n", 2)[2]) for envelope in envelopes]
    assert [batch["batch_id"] for batch in given_back] == ["b2"], given_back
    rows = read_jsonl(regional_scrapyd.workdir / ROWS)
    stored_b2 = [row["id"] for row in rows if row["batch_id"] == "b2"]
    assert given_back[0]["ids"], f"b2 given back empty; stored: {stored_b2}"
    assert stored_b2 + given_back[0]["ids"] == ["4", "5"], (stored_b2, given_back)
    assert "given back at shutdown: 1)" in log, log


@pytest.mark.parametrize(
    ("username", "password"), [(USERNAME, "not-the-password"), ("", "")], ids=["wrong", "none"]
)
def test_scrapyd_launcher_refused_without_the_right_credentials(
    regional_scrapyd: Scrapyd, username: str, password: str
) -> None:
    node = regional_scrapyd

    def job_ids() -> set[str]:
        jobs = node.jobs()
        return {job["id"] for state in ("pending", "running", "finished") for job in jobs[state]}

    before = job_ids()

    async def start() -> httpx.HTTPStatusError:
        launcher = ScrapydLauncher(launcher_config(username, password))
        try:
            with pytest.raises(httpx.HTTPStatusError) as raised:
                await launcher.start(Region(name=REGION, scrapyd=node.url))
            return raised.value
        finally:
            await launcher.close()

    error = asyncio.run(start())
    assert error.response.status_code == 401, error
    assert error.request.url.path == "/schedule.json"
    assert job_ids() == before
