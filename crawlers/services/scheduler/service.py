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
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from crawlers.config import HydraConfig, project_path
from crawlers.db.scheduler_models import JobState
from crawlers.db.state import StateDB
from crawlers.models.task_config import EmailAlert, EnvRef, SecretValue, TaskConfig, load_task_file
from crawlers.queues import new_worker_id
from crawlers.services.scheduler.alerts import Alerter
from crawlers.services.scheduler.launcher import LocalJobLauncher, RunningJob
from crawlers.services.scheduler.queue import FiredJob, PriorityDispatcher, retry_delay
from crawlers.services.scheduler.secrets import SecretBox
from crawlers.services.scheduler.store import SchedulerStore
from crawlers.services.scheduler.triggers import Clock, SystemClock, due_fires

logger = logging.getLogger(__name__)
TICK_SECONDS = 0.5
FAILED_STATES = ("failed", "timed_out")


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
        import os

        self.config = config
        self.db = db
        self.clock = clock or SystemClock()
        self.environ = dict(os.environ) if environ is None else environ
        self.store = SchedulerStore(db)
        self.box = SecretBox.from_config(config)
        self.launcher = LocalJobLauncher(project_path(config.scheduler_jobs_dir), self.environ)
        self.alerter = Alerter(config)
        self.id = new_worker_id()
        self.queue = PriorityDispatcher()
        self.running: dict[str, RunningJob] = {}
        self.pending: dict[str, _Pending] = {}
        self._tasks_file_mtime = 0.0
        self._loop: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._rng = random.Random()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self.db.open()
        await self._load_tasks_file()
        self._loop = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=5)
            self._loop.cancel()
        for job in list(self.running.values()):
            await self.launcher.stop(job)
            await self._judge(job, self.clock.now())
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
        await self._fire(now)
        await self._adopt()
        await self._reap(now)
        await self._release(now)
        await self._dispatch(now)
        await self._watch(now)

    async def _adopt(self) -> None:
        """Queued jobs this replica does not hold (a restarted or dead replica's) join
        its queue: whichever replica's ``running`` transition wins, runs them."""
        for record in await self.store.jobs(state="queued", limit=500):
            if record.job_id in self.pending or record.job_id in self.running:
                continue
            task = await self.task(record.task_name)
            if task is None:
                await self.store.transition(record.job_id, "cancelled", "the task was deleted")
                continue
            job = FiredJob.of(task, record.fired_at, record.job_id)
            self.pending[record.job_id] = _Pending(record.attempt, None, None, job)
            self.queue.push(job)

    async def _reap(self, now: datetime) -> None:
        """Running jobs nobody has reported on for ``HYDRA_SCHEDULER_HEARTBEAT_SECONDS``
        (their replica died) fail, and are retried by their task's policy."""
        timeout = timedelta(seconds=self.config.scheduler_heartbeat_seconds)
        for job_id in await self.store.stale_running(now - timeout):
            if job_id in self.running:
                continue
            record = await self.store.job(job_id)
            reason = "no heartbeat: the job's scheduler or worker died"
            if record is None or not await self.store.transition(job_id, "failed", reason, at=now):
                continue
            task = await self.task(record.task_name)
            if task is None:
                continue
            if record.attempt < task.retry.max_retries:
                delay = retry_delay(task.retry, record.attempt + 1, self._rng)
                due = now + timedelta(seconds=delay)
                await self.enqueue(task, record.fired_at, attempt=record.attempt + 1, due=due)
            else:
                await self._alert(task, job_id, "failed", reason, {})

    # -- configs ---------------------------------------------------------------

    async def put_task(self, task: TaskConfig, changed_by: str) -> int:
        public, secrets = task.split_secrets()
        return await self.store.put_config(task.name, public, self.box.seal(secrets), changed_by)

    async def task(self, name: str) -> TaskConfig | None:
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

    # -- firing ----------------------------------------------------------------

    async def _fire(self, now: datetime) -> None:
        for stored in await self.store.list_configs():
            if stored.paused:
                continue
            task = await self.task(stored.name)
            if task is None:
                continue
            last = await self.store.last_fire(task.name) or stored.created_at
            for fire in due_fires(task.schedule, last, now, task.missed):
                if await self.store.claim_fire(task.name, fire, self.id):
                    await self.enqueue(task, fire, attempt=0)

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
    ) -> str:
        job_id = f"{task.name}-{fire:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
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

    # -- running ---------------------------------------------------------------

    async def _dispatch(self, now: datetime) -> None:
        running: dict[str, list[str]] = defaultdict(list)
        for job in self.running.values():
            running[job.task].append(job.job_id)
        turn = self.queue.dispatch(running, self.config.scheduler_max_running)
        for skipped in turn.skipped:
            self.pending.pop(skipped.job.job_id, None)
            await self.store.transition(skipped.job.job_id, "cancelled", skipped.reason)
        for dispatch in turn.dispatched:
            if dispatch.cancel is not None:
                await self.cancel(dispatch.cancel, "replaced by a newer fire")
            await self._start(dispatch.job, now)

    async def _start(self, fired: FiredJob, now: datetime) -> None:
        pending = self.pending.get(fired.job_id) or _Pending(0)
        task = await self.task(fired.task)
        if task is None:
            await self.store.transition(fired.job_id, "cancelled", "the task was deleted")
            return
        # the job is ours only if this transition is: another replica may hold it
        log_ref = str(self.launcher.jobs_dir / fired.job_id / "job.log")
        if not await self.store.transition(
            fired.job_id, "running", "started", at=now, worker=self.id, log_ref=log_ref
        ):
            self.pending.pop(fired.job_id, None)
            return
        try:
            args = {**task.spider_args(self.environ), **(pending.args or {})}
            job = await self.launcher.start(fired.job_id, task, args)
        except Exception as exc:  # a missing env secret, a spider that cannot start
            self.pending.pop(fired.job_id, None)
            await self.store.transition(fired.job_id, "failed", f"not started: {exc}")
            await self._alert(task, fired.job_id, "failed", f"not started: {exc}", {})
            return
        self.running[fired.job_id] = job

    async def _watch(self, now: datetime) -> None:
        for job in list(self.running.values()):
            if job.process.returncode is not None:
                await self._judge(job, now)
                continue
            await self.store.heartbeat(job.job_id, now)
            task = await self.task(job.task)
            record = await self.store.job(job.job_id)
            started = record.started_at if record is not None else None
            limit = task.timeout_seconds if task is not None else None
            if limit and started and now - started > timedelta(seconds=limit):
                await self.launcher.stop(job, kill_after=10)
                reason = f"ran longer than its timeout ({limit:g} s)"
                await self._finish(job, "timed_out", reason, job.stats(), now)

    async def _judge(self, job: RunningJob, now: datetime) -> None:
        await job.process.wait()
        stats = job.stats()
        task = await self.task(job.task)
        problems = []
        if job.process.returncode != 0:
            problems.append(f"exit status {job.process.returncode}")
        if task is not None:
            problems += task.expect.violations(stats)
        await self._finish(
            job, "failed" if problems else "succeeded", "; ".join(problems), stats, now
        )

    async def _finish(
        self, job: RunningJob, state: JobState, reason: str, stats: dict[str, Any], now: datetime
    ) -> None:
        self.running.pop(job.job_id, None)
        pending = self.pending.pop(job.job_id, None) or _Pending(0)
        await self.store.transition(job.job_id, state, reason, at=now, stats_json=_plain(stats))
        task = await self.task(job.task)
        if task is None:
            return
        if state in FAILED_STATES and pending.attempt < task.retry.max_retries:
            attempt = pending.attempt + 1
            delay = retry_delay(task.retry, attempt, self._rng)
            record = await self.store.job(job.job_id)
            fire = record.fired_at if record is not None else now
            due = now + timedelta(seconds=delay)
            retry = await self.enqueue(task, fire, attempt=attempt, args=pending.args, due=due)
            logger.warning(
                "Job %s %s (%s); retry %d as %s in %.1f s",
                job.job_id,
                state,
                reason,
                attempt,
                retry,
                delay,
            )
            return
        await self._alert(task, job.job_id, state, reason, stats)

    async def cancel(self, job_id: str, reason: str = "cancelled by an operator") -> bool:
        job = self.running.get(job_id)
        if job is not None:
            self.running.pop(job_id, None)
            self.pending.pop(job_id, None)
            await self.launcher.stop(job)
            return await self.store.transition(
                job_id, "cancelled", reason, stats_json=_plain(job.stats())
            )
        self.queue.remove(job_id)
        self.pending.pop(job_id, None)
        return await self.store.transition(job_id, "cancelled", reason)

    # -- alerts ----------------------------------------------------------------

    async def _alert(
        self, task: TaskConfig, job_id: str, state: str, reason: str, stats: dict[str, Any]
    ) -> None:
        events: set[str] = set()
        if state in FAILED_STATES:
            events.add("failure")
        if state == "timed_out":
            events.add("timeout")
        if state == "succeeded" and int(stats.get("item_scraped_count", 0) or 0) == 0:
            events.add("zero_items")
        failures = await self.store.consecutive_failures(task.name) if state in FAILED_STATES else 0
        for rule in task.alerts:
            hit = events & set(rule.on)
            if "consecutive_failures" in rule.on and failures >= rule.consecutive:
                hit.add("consecutive_failures")
            if not hit:
                continue
            event = {
                "task": task.name, "job_id": job_id, "state": state, "reason": reason,
                "event": ",".join(sorted(hit)), "consecutive_failures": failures,
                "items": stats.get("item_scraped_count", 0), "at": self.clock.now().isoformat(),
            }  # fmt: skip
            if isinstance(rule, EmailAlert):
                await self.alerter.email(rule.email, event)
            else:
                await self.alerter.webhook(self._url(rule.webhook), event)

    def _url(self, value: str | SecretValue | EnvRef) -> str:
        if isinstance(value, SecretValue):
            return value.secret.get_secret_value()
        if isinstance(value, EnvRef):
            return self.environ.get(value.env, "")
        return value


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in stats.items()
    }
