"""Start and stop a region's worker: a local ``scrapy crawl prices`` or a Scrapyd job.

A handle is a small JSON-able dict kept in the region's state, so another
controller can stop a worker this one started (Scrapyd) or at least see it.
Stopping is graceful (SIGINT / Scrapyd ``cancel.json``): the worker stores and
acks what it fetched and gives the rest back to its region's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any, Protocol

import httpx

from crawlers.commands.workers import per_process_path, per_process_sink
from crawlers.config import HydraConfig, project_root
from crawlers.models.regions import Region

logger = logging.getLogger(__name__)

Handle = dict[str, Any]


class Launcher(Protocol):
    async def start(self, region: Region) -> Handle: ...

    async def stop(self, handle: Handle) -> None: ...

    async def alive(self, handle: Handle) -> bool: ...

    async def close(self) -> None: ...


class LocalLauncher:
    """Workers as child processes with the controller's settings plus ``HYDRA_REGION``."""

    def __init__(self, env: dict[str, str], stop_timeout: float = 60.0) -> None:
        self.env = env
        self.stop_timeout = stop_timeout
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._reapers: set[asyncio.Task[None]] = set()

    async def start(self, region: Region) -> Handle:
        env = {**self.env, "HYDRA_REGION": region.name}
        # two processes never share a file: out.jsonl -> out.<region>.jsonl
        if env.get("HYDRA_SINKS"):
            sinks = [s.strip() for s in env["HYDRA_SINKS"].split(",") if s.strip()]
            env["HYDRA_SINKS"] = ",".join(per_process_sink(s, region.name) for s in sinks)
        if env.get("HYDRA_SUMMARY_PATH"):
            env["HYDRA_SUMMARY_PATH"] = per_process_path(env["HYDRA_SUMMARY_PATH"], region.name)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scrapy", "crawl", "prices",
            cwd=project_root(), env=env, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self._children[process.pid] = process
        logger.info("Started the worker of region %s (pid %d)", region.name, process.pid)
        return {"launcher": "local", "pid": process.pid}

    async def stop(self, handle: Handle) -> None:
        process = self._children.get(int(handle.get("pid", 0)))
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGINT)
        reaper = asyncio.ensure_future(self._reap(process))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:  # its leases expire and another region reclaims them
            logger.warning("Worker pid %d ignored SIGINT; killing it", process.pid)
            process.kill()
            await process.wait()
        self._children.pop(process.pid, None)

    async def alive(self, handle: Handle) -> bool:
        process = self._children.get(int(handle.get("pid", 0)))
        return process is not None and process.returncode is None

    async def close(self) -> None:
        for pid in list(self._children):
            await self.stop({"pid": pid})
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)


class ScrapydLauncher:
    """Workers as Scrapyd jobs on the region's node (``scrapyd`` in ``HYDRA_REGIONS``).

    Only ``HYDRA_REGION`` is passed as a job setting (Scrapyd shows job arguments);
    the node's own environment carries ``HYDRA_REDIS_URL`` and other secrets.
    """

    def __init__(self, config: HydraConfig) -> None:
        self.project = config.scrapyd_project
        auth = None
        if config.scrapyd_username:
            auth = httpx.BasicAuth(config.scrapyd_username, config.scrapyd_password)
        self._client = httpx.AsyncClient(auth=auth, timeout=10.0)

    async def start(self, region: Region) -> Handle:
        assert region.scrapyd is not None
        data = {
            "project": self.project,
            "spider": "prices",
            "setting": f"HYDRA_REGION={region.name}",
        }
        answer = await self._call(region.scrapyd, "schedule.json", data)
        logger.info(
            "Scheduled the worker of region %s on Scrapyd (job %s)", region.name, answer["jobid"]
        )
        return {"launcher": "scrapyd", "node": region.scrapyd, "job": answer["jobid"]}

    async def stop(self, handle: Handle) -> None:
        data = {"project": self.project, "job": handle["job"], "signal": "INT"}
        await self._call(handle["node"], "cancel.json", data)

    async def alive(self, handle: Handle) -> bool:
        url = f"{handle['node'].rstrip('/')}/listjobs.json"
        answer = await self._client.get(url, params={"project": self.project})
        answer.raise_for_status()
        jobs = answer.json()
        return any(
            job["id"] == handle["job"] for key in ("pending", "running") for job in jobs[key]
        )

    async def _call(self, node: str, endpoint: str, data: dict[str, str]) -> dict[str, Any]:
        answer = await self._client.post(f"{node.rstrip('/')}/{endpoint}", data=data)
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        if body.get("status") != "ok":
            raise RuntimeError(f"Scrapyd {endpoint}: {body.get('message', body)}")
        return body

    async def close(self) -> None:
        await self._client.aclose()


class Launchers:
    """The launcher for each region: Scrapyd if the region names a node, else local."""

    def __init__(self, config: HydraConfig, env: dict[str, str] | None = None) -> None:
        self.local = LocalLauncher(dict(os.environ) if env is None else env)
        self.scrapyd = ScrapydLauncher(config)

    def for_region(self, region: Region) -> Launcher:
        return self.scrapyd if region.scrapyd else self.local

    def for_handle(self, handle: Handle) -> Launcher:
        return self.scrapyd if handle.get("launcher") == "scrapyd" else self.local

    async def close(self) -> None:
        await self.local.close()
        with contextlib.suppress(Exception):
            await self.scrapyd.close()
