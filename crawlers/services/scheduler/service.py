"""The scheduler's engine: fires due triggers, queues by priority, runs, judges, retries, alerts.

Every tick (half a second): configs whose trigger is due get a job (the fire is
claimed in the state database first, so two replicas never fire it twice); jobs
wait in a priority queue for a slot (global ``HYDRA_SCHEDULER_MAX_RUNNING``, the
task's ``max_parallel`` and ``concurrency`` policy); a started job is a local
``scrapy crawl``; when it ends, its exit status and final stats against the
task's ``expect`` decide ``succeeded`` or ``failed`` (a job past its timeout is
stopped and ``timed_out``); a failure is retried with back-off and jitter up to
``retry.max_retries``, then the task's alert rules are applied. Every state
change is stored with its reason (the job's history).

Jobs report through the status stream (:mod:`crawlers.extensions.job_status`):
running, progress, heartbeats and their end, so any replica can judge a job it
did not start (another replica's, or one on a Scrapyd node, see
:mod:`crawlers.services.scheduler.remote`). Configs are served from an
in-memory cache (:mod:`crawlers.services.scheduler.configs`) that a change made
anywhere reaches through the config topic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlers.config import HydraConfig, project_path
from crawlers.db.scheduler_models import JobState
from crawlers.db.state import StateDB
from crawlers.models.job_status import FIRST_ITEMS_KEY
from crawlers.models.task_config import TaskConfig, load_task_file
from crawlers.queues import new_worker_id
from crawlers.services.scheduler.alert_rules import FAILED_STATES, send_alerts
from crawlers.services.scheduler.alerts import Alerter
from crawlers.services.scheduler.configs import ConfigCache
from crawlers.services.scheduler.feeds import build_feeds
from crawlers.services.scheduler.launcher import LocalJobLauncher, RunningJob
from crawlers.services.scheduler.queue import FiredJob, PriorityDispatcher, retry_delay
from crawlers.services.scheduler.reports import StreamIntake
from crawlers.services.scheduler.secrets import SecretBox
from crawlers.services.scheduler.store import MAX_PAGE, SchedulerStore
from crawlers.services.scheduler.triggers import Clock, SystemClock

if TYPE_CHECKING:
    from crawlers.services.scheduler.remote import RemoteJobs

logger = logging.getLogger(__name__)
TICK_SECONDS = 0.5
#: fires claimed per tick at most; the rest wait for the next tick (still on time)
FIRES_PER_TICK = 500
#: how often the scheduler prunes expired history, and how much at most each time
PRUNE_SECONDS = 60.0
PRUNE_BATCH = 1000


@dataclass
class _Pending:
    attempt: int
    args: dict[str, str] | None = None
    due: datetime | None = None
    job: FiredJob | None = field(default=None, repr=False)


class Scheduler:
    def __init__(
        self,
        config: HydraConfig,
        db: StateDB,
        *,
        clock: Clock | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock or SystemClock()
        self.environ = dict(os.environ) if environ is None else environ
        self.id = new_worker_id()
        self._next_prune: datetime | None = None
        self.store = SchedulerStore(db)
        self.box = SecretBox.from_config(config)
        self.configs = ConfigCache(self.store, self.box)
        self.feeds = build_feeds(config, self.id)
        self.launcher = LocalJobLauncher(
            project_path(config.scheduler_jobs_dir), self.environ, self.report_env()
        )
        self.remote: RemoteJobs | None = None
        self.intake = StreamIntake(self)
        self.alerter = Alerter(config)
        self.queue = PriorityDispatcher()
        self.running: dict[str, RunningJob] = {}
        self.pending: dict[str, _Pending] = {}
        #: final stats local jobs reported on the status stream, until their process ends
        self.reported: dict[str, dict[str, Any]] = {}
        self._tasks_file_mtime = 0.0
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._rng = random.Random()

    def report_env(self) -> dict[str, str]:
        """Where a job the scheduler starts reports (a task's own settings may not move
        the stream; they may pick another Redis or topics folder for their data)."""
        status_url = self.config.job_status_url or self.config.redis_url
        return {
            "HYDRA_JOB_STATUS_STREAM": self.config.job_status_stream,
            "HYDRA_JOB_HEARTBEAT_SECONDS": repr(self.config.job_heartbeat_seconds),
            "HYDRA_TOPICS_PATH": str(project_path(self.config.topics_path)),
            **({"HYDRA_JOB_STATUS_URL": status_url} if status_url else {}),
        }

    # -- lifecycle -------------------------------------------------------------

    async def start(self, *, ticking: bool = True) -> None:
        """Open the database and streams and load the configs; then tick every
        :data:`TICK_SECONDS` (``ticking=False``: the caller ticks, as tests do)."""
        await self.db.open()
        await self.feeds.open()
        await self._load_tasks_file()
        await self.configs.load()
        if self.config.scheduler_nodes:
            from crawlers.services.scheduler.remote import RemoteJobs

            self.remote = RemoteJobs(self)
        if ticking:
            self._loop = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=5)
            self._loop.cancel()
        for job in list(self.running.values()):
            await self.launcher.stop(job)
            await self._judge(job, self.clock.now())
        if self.remote is not None:
            await self.remote.close()
        await self.feeds.close()
        await self.db.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("Scheduler tick failed")
            await asyncio.sleep(TICK_SECONDS)

    async def tick(self) -> None:
        now = self.clock.now()
        await self._load_tasks_file()
        await self._sync_configs()
        await self._fire(now)
        await self.intake.take_triggers(now)
        await self.intake.take_status(now)
        await self._adopt()
        await self._reap(now)
        await self._prune(now)
        await self._release(now)
        await self._dispatch(now)
        await self._watch(now)
        if self.remote is not None:
            await self.remote.reconcile(now)

    # -- configs ---------------------------------------------------------------

    async def put_task(self, task: TaskConfig, changed_by: str) -> int:
        public, secrets = task.split_secrets()
        sealed = self.box.seal(secrets)
        version = await self.store.put_config(task.name, public, sealed, changed_by)
        await self._changed(task.name, version)
        return version

    async def set_paused(self, name: str, paused: bool, changed_by: str) -> int:
        version = await self.store.set_paused(name, paused, changed_by)
        await self._changed(name, version)
        return version

    async def delete_task(self, name: str, changed_by: str) -> bool:
        deleted = await self.store.delete_config(name, changed_by)
        if deleted:
            await self._changed(name, 0)
        return deleted

    async def _changed(self, name: str, version: int) -> None:
        """Apply a change here at once, and tell the other replicas (a lost notice is
        caught by the cache's periodic resync)."""
        await self.configs.reload(name)
        try:
            await self.feeds.publish_config(name, version)
        except Exception as exc:
            logger.warning("Config change of %s not published: %s", name, type(exc).__name__)

    async def _sync_configs(self) -> None:
        try:
            names = await self.feeds.config_changes()
        except Exception as exc:
            logger.warning("Config topic unreadable: %s", type(exc).__name__)
            names = []
        for name in dict.fromkeys(names):
            await self.configs.reload(name)
        await self.configs.resync()

    async def task(self, name: str) -> TaskConfig | None:
        """The task as stored now (the API's view; the engine works from its cache)."""
        stored = await self.store.get_config(name)
        if stored is None:
            return None
        task = TaskConfig.join_secrets(stored.config, self.box.unseal(stored.secrets_encrypted))
        return task.model_copy(update={"paused": stored.paused})

    async def _load_tasks_file(self) -> None:
        if not self.config.tasks_file:
            return
        path = project_path(self.config.tasks_file)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._tasks_file_mtime:
            return
        self._tasks_file_mtime = mtime
        try:
            tasks = await asyncio.to_thread(load_task_file, path)
        except Exception as exc:  # a bad edit keeps the configs that were loaded
            logger.error("Tasks file %s not applied: %s", path, exc)
            return
        for task in tasks:
            await self.put_task(task, f"file:{Path(path).name}")
        logger.info("Loaded %d task configs from %s", len(tasks), path)

    # -- firing and triggers ---------------------------------------------------

    async def _fire(self, now: datetime) -> None:
        """Claim the due fires (at most :data:`FIRES_PER_TICK`, so that dispatch is not
        held up behind a minute in which thousands of tasks are due) and queue their jobs."""
        for task, fire in self.configs.due(now, limit=FIRES_PER_TICK):
            job_id = _job_id(task.name, fire)
            if await self.store.fire_job(task.name, fire, self.id, job_id, task.priority):
                job = FiredJob.of(task, fire, job_id)
                self.pending[job_id] = _Pending(0, None, None, job)
                self.queue.push(job)

    async def trigger(self, name: str, args: dict[str, str] | None = None) -> str | None:
        """Run a task now (the API's trigger and the webhook): a job of its own."""
        task = await self.task(name)
        if task is None:
            return None
        return await self.enqueue(task, self.clock.now(), attempt=0, args=args)

    async def enqueue(
        self,
        task: TaskConfig,
        fire: datetime,
        *,
        attempt: int,
        args: dict[str, str] | None = None,
        due: datetime | None = None,
        job_id: str | None = None,
    ) -> str:
        job_id = job_id or _job_id(task.name, fire)
        await self.store.create_job(job_id, task.name, attempt, task.priority, fire, due or fire)
        job = FiredJob.of(task, fire, job_id)
        self.pending[job_id] = _Pending(attempt, args, due, job)
        if due is None:
            await self.store.transition(job_id, "queued", "fired" if attempt == 0 else "retry")
            self.queue.push(job)
        return job_id

    async def _release(self, now: datetime) -> None:
        """Retries whose back-off is over join the queue."""
        for job_id, pending in list(self.pending.items()):
            if pending.due is not None and pending.due <= now and pending.job is not None:
                pending.due = None
                await self.store.transition(job_id, "queued", f"retry {pending.attempt}")
                self.queue.push(pending.job)

    async def _adopt(self) -> None:
        """Queued jobs this replica does not hold (a restarted or dead replica's) join
        its queue: whichever replica's ``running`` transition wins, runs them."""
        for record in await self.store.jobs(state="queued", limit=500):
            if record.job_id in self.pending or record.job_id in self.running:
                continue
            task = self.configs.get(record.task_name)
            if task is None:
                await self.store.transition(record.job_id, "cancelled", "the task was deleted")
                continue
            job = FiredJob.of(task, record.fired_at, record.job_id)
            self.pending[record.job_id] = _Pending(record.attempt, None, None, job)
            self.queue.push(job)

    # -- status reports --------------------------------------------------------

    async def _reap(self, now: datetime) -> None:
        """Running jobs nobody has reported on for ``HYDRA_SCHEDULER_HEARTBEAT_SECONDS``
        (their worker, node or replica died) fail, and are retried by their task's policy."""
        timeout = timedelta(seconds=self.config.scheduler_heartbeat_seconds)
        for job_id in await self.store.stale_running(now - timeout):
            if job_id in self.running:
                continue
            record = await self.store.job(job_id)
            if record is None:
                continue
            reason = "no heartbeat: the job's worker, node or scheduler died"
            await self.settle(job_id, record.task_name, "failed", reason, record.stats, now)

    async def _prune(self, now: datetime) -> None:
        """At most once every :data:`PRUNE_SECONDS`, delete up to
        :data:`PRUNE_BATCH` final jobs older than ``HYDRA_SCHEDULER_JOB_RETENTION_DAYS``
        (with their transitions) and as many old trigger fires (each task's last one
        stays: its trigger's window starts there); a larger backlog goes batch by batch."""
        days = self.config.scheduler_job_retention_days
        if days <= 0 or (self._next_prune is not None and now < self._next_prune):
            return
        self._next_prune = now + timedelta(seconds=PRUNE_SECONDS)
        cutoff = now - timedelta(days=days)
        try:
            jobs = await self.store.prune_jobs(cutoff, PRUNE_BATCH)
            fires = await self.store.prune_fires(cutoff, keep_last=True, limit=PRUNE_BATCH)
        except Exception as exc:
            logger.warning("Pruning old jobs failed: %s", type(exc).__name__)
            return
        if jobs or fires:
            logger.info("Pruned %d jobs and %d trigger fires older than %s", jobs, fires, cutoff)

    # -- running ---------------------------------------------------------------

    async def _dispatch(self, now: datetime) -> None:
        if not len(self.queue):
            return
        running: dict[str, list[str]] = defaultdict(list)
        for record in await self.store.jobs(state="running", limit=MAX_PAGE):
            running[record.task_name].append(record.job_id)
        for job in self.running.values():
            if job.job_id not in running[job.task]:
                running[job.task].append(job.job_id)
        limit = self.config.scheduler_max_running
        if self.remote is not None:  # the nodes' free slots bound what starts now
            counted = sum(len(ids) for ids in running.values())
            limit = min(limit, counted + await self.remote.free_slots())
        turn = self.queue.dispatch(running, limit)
        for skipped in turn.skipped:
            self.pending.pop(skipped.job.job_id, None)
            await self.store.transition(skipped.job.job_id, "cancelled", skipped.reason)
        for dispatch in turn.dispatched:
            if dispatch.cancel is not None:
                await self.cancel(dispatch.cancel, "replaced by a newer fire")
            await self._start(dispatch.job, now)

    async def _start(self, fired: FiredJob, now: datetime) -> None:
        pending = self.pending.get(fired.job_id) or _Pending(0)
        task = self.configs.get(fired.task)
        if task is None:
            await self.store.transition(fired.job_id, "cancelled", "the task was deleted")
            return
        if self.remote is not None:
            log_ref = None
        else:
            log_ref = str(self.launcher.jobs_dir / fired.job_id / "job.log")
        # the job is ours only if this transition is: another replica may hold it
        if not await self.store.transition(
            fired.job_id, "running", "started", at=now, worker=self.id, log_ref=log_ref
        ):
            self.pending.pop(fired.job_id, None)
            return
        try:
            args = {**task.spider_args(self.environ), **(pending.args or {})}
            if self.remote is not None:
                await self.remote.start(fired.job_id, task, args)
                return
            job = await self.launcher.start(fired.job_id, task, args)
            job.started_at = now
            self.running[fired.job_id] = job
        except Exception as exc:  # a missing env secret, a spider or node that cannot start
            reason = f"not started: {self.config.redactor.text(str(exc))}"
            await self.settle(fired.job_id, task.name, "failed", reason, {}, now)

    async def _watch(self, now: datetime) -> None:
        if any(job.process.returncode is not None for job in self.running.values()):
            await self.intake.take_status(now)  # the final stats a job sent before it exited
        alive = []
        for job in list(self.running.values()):
            if job.process.returncode is not None:
                await self._judge(job, now)
                continue
            alive.append(job.job_id)
            task = self.configs.get(job.task)
            limit = task.timeout_seconds if task is not None else None
            started = job.started_at
            if limit and started and now - started > timedelta(seconds=limit):
                await self.launcher.stop(job, kill_after=10)
                reason = f"ran longer than its timeout ({limit:g} s)"
                await self.settle(job.job_id, job.task, "timed_out", reason, job.stats(), now)
                alive.remove(job.job_id)
        await self.store.heartbeats(alive, now)  # the processes live: one write for all

    async def _judge(self, job: RunningJob, now: datetime) -> None:
        await job.process.wait()
        stats = self.reported.pop(job.job_id, None) or job.stats()
        task = self.configs.get(job.task)
        problems = []
        if job.process.returncode != 0:
            problems.append(f"exit status {job.process.returncode}")
        if task is not None:
            problems += task.expect.violations(stats)
        state: JobState = "failed" if problems else "succeeded"
        await self.settle(job.job_id, job.task, state, "; ".join(problems), stats, now)

    async def settle(
        self,
        job_id: str,
        task_name: str,
        state: JobState,
        reason: str,
        stats: dict[str, Any],
        now: datetime,
    ) -> None:
        """End a job (whoever ran it); a failure is retried by policy, then alerted.
        Only the caller whose transition wins goes on, so two replicas that both see a
        job end never both retry it."""
        self.running.pop(job_id, None)
        self.reported.pop(job_id, None)
        pending = self.pending.pop(job_id, None)
        if FIRST_ITEMS_KEY not in stats:  # reported with a heartbeat only: keep them
            current = await self.store.job(job_id)
            if current is not None and FIRST_ITEMS_KEY in current.stats:
                stats = {**stats, FIRST_ITEMS_KEY: current.stats[FIRST_ITEMS_KEY]}
        if not await self.store.transition(job_id, state, reason, at=now, stats_json=_plain(stats)):
            return
        logger.log(
            logging.INFO if state == "succeeded" else logging.WARNING,
            "Job %s %s%s", job_id, state, f": {reason}" if reason else "",
            extra={"job_id": job_id, "task": task_name, "state": state},
        )  # fmt: skip
        record = await self.store.job(job_id)
        task = self.configs.get(task_name)
        if task is None or record is None:
            return
        if state in FAILED_STATES and record.attempt < task.retry.max_retries:
            attempt = record.attempt + 1
            delay = retry_delay(task.retry, attempt, self._rng)
            args = pending.args if pending is not None else None
            due = now + timedelta(seconds=delay)
            retry = await self.enqueue(task, record.fired_at, attempt=attempt, args=args, due=due)
            logger.warning(
                "Job %s will be retried (attempt %d) as %s in %.1f s",
                job_id, attempt, retry, delay,
                extra={"job_id": retry, "task": task_name, "state": "pending"},
            )  # fmt: skip
            return
        await self._alert(task, job_id, state, reason, stats)

    async def cancel(self, job_id: str, reason: str = "cancelled by an operator") -> bool:
        job = self.running.pop(job_id, None)
        self.pending.pop(job_id, None)
        if job is not None:
            await self.launcher.stop(job)
            return await self.store.transition(
                job_id, "cancelled", reason, stats_json=_plain(job.stats())
            )
        self.queue.remove(job_id)
        if self.remote is not None:
            await self.remote.cancel(job_id)
        return await self.store.transition(job_id, "cancelled", reason)

    async def _alert(
        self, task: TaskConfig, job_id: str, state: str, reason: str, stats: dict[str, Any]
    ) -> None:
        failed = state in FAILED_STATES
        failures = await self.store.consecutive_failures(task.name) if failed else 0
        job = {"job_id": job_id, "state": state, "reason": reason, "stats": stats}
        await send_alerts(
            self.alerter, task, job,
            consecutive_failures=failures, at=self.clock.now(), environ=self.environ,
        )  # fmt: skip


def _job_id(task: str, fire: datetime) -> str:
    return f"{task}-{fire:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats as JSON scalars; the first items a job reported stay a list (for the console)."""
    return {
        key: value
        if isinstance(value, int | float | str | bool) or key == FIRST_ITEMS_KEY
        else str(value)
        for key, value in stats.items()
    }
