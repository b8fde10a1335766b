"""The scheduler's Scrapyd node pool against two real Scrapyd servers.

Both get the project's egg (scrapyd-deploy). Jobs are ``prices`` crawls: without IDs one
ends at once ("Nothing to do"); with an ID whose URL is a black hole (a socket that
listens but never answers) it runs until killed, holding its slot.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.services.scheduler.nodes import NodeState, ScrapydError, ScrapydNodes
from tests.scrapyd_servers import (
    PROJECT,
    USERNAME,
    Scrapyd,
    assert_deployed,
    copy_project,
    deploy,
    start_scrapyd,
)
from tests.servers import free_port

pytestmark = pytest.mark.integration

RETRY = 30.0  # HYDRA_SCHEDULER_NODE_RETRY_SECONDS of these tests (on a fake clock)
JOB_TIMEOUT = 60.0
QUICK: dict[str, str] = {}  # no IDs: the crawl ends at once


@dataclass
class Pool:
    """Two deployed Scrapyd servers sharing one password, and a black-hole URL template."""

    servers: list[Scrapyd]
    password: str
    hang_template: str

    def hang_args(self) -> dict[str, str]:
        return {"ids": "1", "url_template": self.hang_template}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    password = secrets.token_urlsafe(16)
    servers: list[Scrapyd] = []
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)  # connections complete in the kernel; nothing ever answers
        template = f"http://127.0.0.1:{black_hole.getsockname()[1]}/price/{{id}}"
        try:
            for name in ("node-a", "node-b"):
                servers.append(start_scrapyd(tmp_path_factory.mktemp(name), password=password))
            copies = [copy_project(tmp_path_factory.mktemp("project")) for _ in servers]
            with ThreadPoolExecutor(len(servers)) as executor:  # each builds its own copy
                for deployed in executor.map(deploy, servers, copies):
                    assert_deployed(deployed)
            yield Pool(servers, password, template)
        finally:
            for server in servers:
                if server.process.poll() is None:
                    server.kill_jobs()
                server.stop()


@pytest.fixture(autouse=True)
def idle_nodes(pool: Pool) -> Iterator[None]:
    """Each test starts with empty nodes: the last one's jobs are killed and gone."""
    yield
    for server in pool.servers:
        if server.process.poll() is not None:
            continue
        server.kill_jobs()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, status = server.request("daemonstatus.json")
            if status.get("running") == 0 and status.get("pending") == 0:
                break
            time.sleep(0.1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(nodes: list[str], password: str = "") -> HydraConfig:
    """Auth from the config (HYDRA_SCRAPYD_*) when ``password`` is given, else none."""
    settings: dict[str, Any] = {
        "HYDRA_SCHEDULER_NODES": ",".join(nodes),
        "HYDRA_SCHEDULER_NODE_RETRY_SECONDS": RETRY,
        "HYDRA_SCRAPYD_PROJECT": PROJECT,
    }
    if password:
        settings.update(HYDRA_SCRAPYD_USERNAME=USERNAME, HYDRA_SCRAPYD_PASSWORD=password)
    return HydraConfig.from_settings(Settings(settings))


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def listed(server: Scrapyd, states: tuple[str, ...] = ("pending", "running")) -> set[str]:
    jobs = server.jobs()
    return {job["id"] for state in states for job in jobs[state]}


def started_line(server: Scrapyd, jobid: str) -> str | None:
    for line in server.log_path.read_text(encoding="utf-8").splitlines():
        if "Process started:" in line and f"'{jobid}'" in line:
            return line
    return None


def node_logs(caplog: pytest.LogCaptureFixture, level: int, words: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "crawlers.services.scheduler.nodes"
        and record.levelno == level
        and words in record.getMessage()
    ]


def test_jobs_spread_over_the_nodes_free_slots(pool: Pool) -> None:
    a, b = pool.servers
    nodes_config = config([f"{a.url}#slots=2", f"{b.url}/#slots=2"], pool.password)
    ids = [f"spread-{number}" for number in range(4)]
    settings = {"DOWNLOAD_TIMEOUT": "120", "HYDRA_JOB_ID": "x=y"}

    async def scenario() -> None:
        nodes = ScrapydNodes(nodes_config)
        fresh = ScrapydNodes(nodes_config)
        try:
            await nodes.refresh()
            assert [(s.url, s.slots, s.up) for s in nodes.states()] == [
                (a.url, 2, True),
                (b.url, 2, True),
            ]
            placed = [await nodes.schedule(i, "prices", pool.hang_args(), settings) for i in ids]
            # most free slots first, ties to the first listed: a, b, a, b without re-polling
            assert [(p.node, p.jobid) for p in placed if p] == list(
                zip([a.url, b.url, a.url, b.url], ids, strict=True)
            )
            assert [s.pending for s in nodes.states()] == [2, 2]
            assert await nodes.schedule("spread-4", "prices", QUICK, {}) is None
            assert listed(a) == {ids[0], ids[2]} and listed(b) == {ids[1], ids[3]}

            # a pool that scheduled nothing learns the load from daemonstatus.json
            await fresh.refresh()
            assert [s.running + s.pending for s in fresh.states()] == [2, 2]
            assert [s.free for s in fresh.states()] == [0, 0]
            assert await fresh.schedule("spread-5", "prices", QUICK, {}) is None
        finally:
            await nodes.close()
            await fresh.close()

    asyncio.run(scenario())
    assert "spread-4" not in listed(a) | listed(b)
    # arguments as spider arguments (-a), settings as -s NAME=VALUE (split at the first "=")
    deadline = time.monotonic() + JOB_TIMEOUT
    while (line := started_line(a, ids[0])) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line is not None, a.server_log()
    for word in ("'-a', 'ids=1'", "'-s', 'DOWNLOAD_TIMEOUT=120'", "'-s', 'HYDRA_JOB_ID=x=y'"):
        assert word in line, line


def test_a_down_node_is_skipped_then_probed_again_after_the_retry_delay(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = pool.servers
    clock = Clock()
    nodes = ScrapydNodes(config([f"{a.url}#slots=2", f"{b.url}#slots=3"], pool.password), clock)

    def state_of_b() -> NodeState:
        return nodes.states()[1]

    async def scenario() -> None:
        try:
            await nodes.refresh()
            assert all(state.up for state in nodes.states())

            b.stop()  # b has the most free slots: tried first, found down, a takes the job
            placed = await nodes.schedule("down-0", "prices", QUICK, {})
            assert placed is not None and placed.node == a.url
            down = state_of_b()
            assert not down.up and down.down_since == clock.now == down.checked_at
            assert (down.last_error or "").startswith("schedule.json: ConnectError"), down
            assert len(node_logs(caplog, logging.WARNING, f"{b.url} is down")) == 1

            clock.now += RETRY - 1  # within the back-off: not asked
            await nodes.refresh()
            assert state_of_b().checked_at == 1000.0
            assert await nodes.jobs(b.url) is None
            placed = await nodes.schedule("down-1", "prices", QUICK, {})
            assert placed is not None and placed.node == a.url

            clock.now += 2  # past it: asked again, still down, not logged again
            await nodes.refresh()
            assert state_of_b().checked_at == clock.now and not state_of_b().up
            assert (state_of_b().last_error or "").startswith("daemonstatus.json: ConnectError")
            assert state_of_b().down_since == 1000.0
            assert len(node_logs(caplog, logging.WARNING, f"{b.url} is down")) == 1

            # b is back, but not asked before its next retry
            pool.servers[1] = start_scrapyd(b.workdir, port=b.port, password=b.password)
            clock.now += RETRY - 1
            await nodes.refresh()
            assert not state_of_b().up
            assert node_logs(caplog, logging.INFO, "up again") == []

            clock.now += 2
            await nodes.refresh()
            back = state_of_b()
            assert back.up and back.down_since is None and back.last_error is None, back
            assert node_logs(caplog, logging.INFO, "up again") == [
                f"Scrapyd node {b.url} is up again"
            ]
            placed = await nodes.schedule("down-2", "prices", QUICK, {})
            assert placed is not None and placed.node == b.url  # 3 free slots against a's <= 2
        finally:
            await nodes.close()

    try:
        asyncio.run(scenario())
    finally:  # the next tests need b
        if pool.servers[1].process.poll() is not None:
            pool.servers[1] = start_scrapyd(b.workdir, port=b.port, password=b.password)
    assert "down-2" in listed(pool.servers[1], ("pending", "running", "finished"))


def test_jobs_follow_listjobs_until_finished(pool: Pool) -> None:
    a = pool.servers[0]
    closed = closed_port_url()
    nodes = ScrapydNodes(config([f"{a.url}#slots=2", closed], pool.password))

    async def scenario() -> list[str]:
        try:
            assert await nodes.jobs(closed) is None  # found down by listjobs.json itself
            down = nodes.states()[1]
            assert not down.up and (down.last_error or "").startswith("listjobs.json: ConnectError")
            await nodes.refresh()
            assert [state.up for state in nodes.states()] == [True, False]
            assert await nodes.jobs(closed) is None  # in its back-off: not asked
            assert await nodes.jobs("http://127.0.0.1:1") is None  # not a node of the pool
            placed = await nodes.schedule("listed-0", "prices", QUICK, {})
            assert placed is not None and placed.node == a.url
            seen: list[str] = []
            deadline = time.monotonic() + JOB_TIMEOUT
            while time.monotonic() < deadline:
                jobs = await nodes.jobs(a.url + "/")
                assert jobs is not None and "listed-1" not in jobs
                if not seen or seen[-1] != jobs["listed-0"]:
                    seen.append(jobs["listed-0"])
                if seen[-1] == "finished":
                    return seen
                await asyncio.sleep(0.1)
            pytest.fail(f"listed-0 not finished: {seen}\n{a.job_log('listed-0')}")
        finally:
            await nodes.close()

    seen = asyncio.run(scenario())
    assert seen[0] in ("pending", "running") and seen[-1] == "finished", seen
    assert set(seen) <= {"pending", "running", "finished"}
    assert "Nothing to do" in a.job_log("listed-0")


def test_credentials_in_node_urls_never_show(pool: Pool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = pool.servers
    wrong, unused = f"wrong-{secrets.token_hex(8)}", f"unused-{secrets.token_hex(8)}"
    closed = f"127.0.0.1:{free_port()}"
    entries = [
        f"http://{USERNAME}:{pool.password}@127.0.0.1:{a.port}#slots=2",
        f"http://{USERNAME}:{wrong}@127.0.0.1:{b.port}",
        f"http://{USERNAME}:{unused}@{closed}",
    ]
    secrets_ = [pool.password, wrong, unused]
    secrets_ += [base64.b64encode(f"{USERNAME}:{s}".encode()).decode() for s in secrets_]
    shown: list[str] = []

    for bad in (
        f"http://{USERNAME}:{unused}@127.0.0.1:port",
        f"http://{USERNAME}:{unused}@{closed}#slots=0",
        f"http://{USERNAME}:{unused[:8]}#{unused[8:]}@{closed}",  # an unescaped "#"
        f"ftp://{USERNAME}:{unused}@{closed}",
    ):
        with pytest.raises(ValueError) as raised:
            ScrapydNodes(config([entries[0], bad]))
        assert "entry 2" in str(raised.value)
        shown.append(str(raised.value))

    # no HYDRA_SCRAPYD_USERNAME/PASSWORD: only the URLs' credentials can open node a
    nodes = ScrapydNodes(config(entries))

    async def scenario() -> None:
        try:
            await nodes.refresh()
            states = nodes.states()
            shown.append(repr(states))
            assert [s.url for s in states] == [a.url, b.url, f"http://{closed}"]
            assert [s.up for s in states] == [True, False, False]
            assert states[1].last_error == "daemonstatus.json: HTTP 401", states[1]
            placed = await nodes.schedule("creds-0", "prices", QUICK, {})
            assert placed is not None and placed.node == a.url, placed
            shown.append(repr(placed))
            assert "creds-0" in (await nodes.jobs(a.url) or {})
            await nodes.cancel(f"http://{closed}", "creds-0")  # down: tolerated, logged
            with pytest.raises(ScrapydError) as refused:  # a refuses it; a is not down for that
                await nodes.schedule("creds-1", "no-such-spider", QUICK, {})
            assert "spider 'no-such-spider' not found" in str(refused.value)
            shown.append(str(refused.value))
            assert nodes.states()[0].up
            with pytest.raises(ValueError) as reserved:
                await nodes.schedule("creds-2", "prices", {"project": "other"}, {})
            shown.append(str(reserved.value))
            with pytest.raises(ValueError) as unsafe:
                await nodes.schedule("../creds-3", "prices", QUICK, {})
            shown.append(str(unsafe.value))
        finally:
            await nodes.close()

    asyncio.run(scenario())
    assert node_logs(caplog, logging.WARNING, f"{b.url} is down (daemonstatus.json: HTTP 401)")
    assert node_logs(caplog, logging.WARNING, "Job creds-0 not cancelled")
    assert any(record.name.startswith("httpx") for record in caplog.records)  # seen, too
    for record in caplog.records:
        shown += [record.getMessage(), repr(record.args), record.exc_text or ""]
    for text in shown:
        for secret in secrets_:
            assert secret not in text, text
