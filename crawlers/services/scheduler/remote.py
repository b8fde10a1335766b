"""Jobs on Scrapyd nodes (``HYDRA_SCHEDULER_NODES``): start, cancel, and keep the truth.

A job goes to the node with the most free slots (:mod:`.nodes`). It reports on the
status stream like a local job, so any replica judges its end. Two things the
stream cannot say are learnt from the nodes:

* a job whose crawl died without a word (SIGKILL, out of memory): its node's
  ``listjobs.json`` lists it ``finished`` (or not at all, after a node restart)
  while it is still ``running`` here. After :data:`REPORT_GRACE` (its last
  report may still be on its way) it fails and is retried by policy;
* a job past its timeout is cancelled on its node and ``timed_out``;
* a job waiting in its node's own queue (Scrapyd's ``max_proc``), or still
  starting, cannot report yet: while its node lists it ``pending`` or
  ``running``, that stands for its heartbeat (a hung crawl is ended by its
  task's timeout).

A node that does not answer is skipped for new jobs; its running jobs stop
heartbeating and the heartbeat reaper fails and retries them elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from crawlers.models.task_config import EnvRef, SecretValue, TaskConfig
from crawlers.services.scheduler.nodes import ScrapydNodes

if TYPE_CHECKING:
    from crawlers.services.scheduler.service import Scheduler

logger = logging.getLogger(__name__)
#: how often running jobs are compared with their nodes' listjobs.json
RECONCILE_SECONDS = 5.0
#: how long a job listed finished may still be running here (its end is in flight)
REPORT_GRACE = timedelta(seconds=15)
#: how often the nodes' load is read while jobs wait for a slot
REFRESH_SECONDS = 1.0
#: the ``worker`` column of a job on a node: this prefix, then the node's public URL
WORKER_PREFIX = "scrapyd "


class RemoteJobs:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.config = scheduler.config
        self.nodes = ScrapydNodes(scheduler.config)
        self._ended: dict[str, datetime] = {}
        self._reconciled = 0.0
        self._refreshed = 0.0

    async def free_slots(self) -> int:
        if time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = time.monotonic()
            await self.nodes.refresh()
        return sum(
            max(0, node.slots - node.running - node.pending)
            for node in self.nodes.states()
            if node.up
        )

    async def start(self, job_id: str, task: TaskConfig, args: dict[str, str]) -> None:
        """Schedule the job on a node; ``RuntimeError`` if none takes it, or if the task
        holds secrets: Scrapyd shows a job's arguments and settings in its job list, its
        log and the command line, so they must come from the node's own environment."""
        secret = [
            f"{part}.{name}"
            for part, values in (("args", task.args), ("settings", task.settings))
            for name, value in values.items()
            if isinstance(value, SecretValue | EnvRef)
        ]
        if secret:
            raise RuntimeError(
                f"{', '.join(sorted(secret))} would show on the Scrapyd node (its job list, "
                "log and command line): set them in the node's environment instead"
            )
        settings = {
            name: value if isinstance(value, str) else json.dumps(value)
            for name, value in task.spider_settings(self.scheduler.environ).items()
        }
        settings.update(
            HYDRA_JOB_ID=job_id,
            HYDRA_JOB_STATUS_STREAM=self.config.job_status_stream,
            HYDRA_JOB_HEARTBEAT_SECONDS=repr(self.config.job_heartbeat_seconds),
        )
        status_url = self.config.job_status_url or self.config.redis_url
        if status_url and urlsplit(status_url).password is None:
            settings["HYDRA_JOB_STATUS_URL"] = status_url  # else the node's environment has it
        placed = await self.nodes.schedule(job_id, task.spider, args, settings)
        if placed is None:
            raise RuntimeError("no Scrapyd node took the job (all busy or down)")
        log_ref = (
            f"{placed.node}/logs/{self.config.scrapyd_project}/{task.spider}/{placed.jobid}.log"
        )
        # scheduling can take seconds (a node's first job of a new egg runs `scrapy list`):
        # its heartbeat counts from when the node took it
        await self.scheduler.store.annotate(
            job_id,
            worker=WORKER_PREFIX + placed.node,
            log_ref=log_ref,
            heartbeat_at=self.scheduler.clock.now(),
        )
        logger.info("Job %s runs on %s", job_id, placed.node)

    async def cancel(self, job_id: str) -> None:
        record = await self.scheduler.store.job(job_id)
        if record is not None and (record.worker or "").startswith(WORKER_PREFIX):
            await self.nodes.cancel((record.worker or "")[len(WORKER_PREFIX) :], job_id)

    async def reconcile(self, now: datetime) -> None:
        every = min(RECONCILE_SECONDS, self.config.scheduler_heartbeat_seconds / 4)
        if time.monotonic() - self._reconciled < every:
            return
        self._reconciled = time.monotonic()
        by_node: dict[str, list[str]] = {}
        records = {}
        for record in await self.scheduler.store.jobs(state="running", limit=1000):
            worker = record.worker or ""
            if worker.startswith(WORKER_PREFIX):
                by_node.setdefault(worker[len(WORKER_PREFIX) :], []).append(record.job_id)
                records[record.job_id] = record
        for node, job_ids in by_node.items():
            listed = await self.nodes.jobs(node)
            if listed is None:
                continue  # down: its jobs stop heartbeating, and the reaper retries them
            for job_id in job_ids:
                record = records[job_id]
                task = self.scheduler.configs.get(record.task_name)
                limit = task.timeout_seconds if task is not None else None
                started = record.started_at
                if limit and started and now - started > timedelta(seconds=limit):
                    await self.nodes.cancel(node, job_id)
                    reason = f"ran longer than its timeout ({limit:g} s)"
                    await self.scheduler.settle(
                        job_id, record.task_name, "timed_out", reason, record.stats, now
                    )
                    continue
                if listed.get(job_id) in ("pending", "running"):  # its node says it lives
                    await self.scheduler.store.heartbeat(job_id, now)
                    self._ended.pop(job_id, None)
                    continue
                first = self._ended.setdefault(job_id, now)
                if now - first >= REPORT_GRACE:
                    self._ended.pop(job_id, None)
                    reason = f"ended on {node} without reporting its end (killed?)"
                    await self.scheduler.settle(
                        job_id, record.task_name, "failed", reason, record.stats, now
                    )
        self._ended = {job_id: at for job_id, at in self._ended.items() if job_id in records}

    async def log(self, log_ref: str) -> str | None:
        """A remote job's log, from its node (``log_ref`` as :meth:`start` stored it)."""
        for state in self.nodes.states():
            if log_ref.startswith(state.url + "/"):
                return await self.nodes.log_tail(state.url, log_ref[len(state.url) + 1 :])
        return None

    async def close(self) -> None:
        await self.nodes.close()
