"""The scheduler under a crowd of due configs, and its memory with many configs loaded.

``python -m benchmarks.scheduler [--configs 10000] [--memory-configs 100000] [--rounds 1]
[--quick] [--skip-postgres]``

**Dispatch.** N task configs, each ``* * * * *`` (UTC), are stored in a fresh state
database (bulk-inserted rows equal to what ``SchedulerStore.put_config`` stores; the
first one goes through ``Scheduler.put_task`` and the others are checked against it),
then loaded by ``Scheduler.start(ticking=False)``. A ``FakeClock`` is set to the next
whole minute, where every config is due, and ``Scheduler.tick()`` is called until every
job was dispatched, with ``HYDRA_SCHEDULER_MAX_RUNNING`` = N so the global limit never
holds a job back. The launcher starts nothing: it records ``time.perf_counter()`` and
returns a job whose "process" is an object with ``returncode = None`` (still running, as
a crawl of minutes is at the next tick), so no process is forked per job (10,000 forks
would measure ``fork``, not the scheduler). A job's **trigger-to-dispatch latency** is
the time from the start of the tick in which it fired to its launcher call, which comes
right after its ``running`` transition committed; **dispatches/s** is N over the time
from the first tick's start to the last launcher call. Every run is checked in the
database: one fire, one job, ``running``, per config. One more tick is then timed:
nothing due, N jobs running.

**Baseline**, in the same run, on a fresh database of the same kind (the same schema
and engine settings): the least a durable scheduler does per fire, written plainly.
For each config, the fire is computed with croniter, the claim row (``trigger_fires``,
an insert that conflicts on ``(task_name, fire_at)``) and the job row (already
``running``) are inserted in one transaction with SQLAlchemy Core, then the same
no-op launcher is called. Two variants: on the event loop's thread (blocking it: the
fastest), and with each transaction in ``asyncio.to_thread`` as Hydra does it.

**Memory.** M configs with varied schedules (cron in several time zones, intervals,
one-offs, external triggers), environment-reference secrets, some sealed plain
secrets, retries, expectations and alerts, are stored; a fresh process then
measures ``ConfigCache.load()``: its time, the growth of ``VmRSS`` (after
``gc.collect()``) and its peak (``VmHWM``), one tick with nothing due and a forced
resync at that size; then tracemalloc's retained and peak bytes per config, and where
they were allocated, for the load of a sample (``--trace-configs``, 5,000: tracemalloc
makes the load ten times slower; bytes per config do not depend on M).

SQLite always; PostgreSQL too when ``postgres@127.0.0.1:5432`` answers (a throw-away
database per run, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from croniter import croniter
from scrapy.settings import Settings
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from benchmarks.runs import ROOT, clean_env
from crawlers.config import HydraConfig
from crawlers.db.models import utcnow
from crawlers.db.state import StateDB
from crawlers.models.task_config import CronSchedule, TaskConfig
from crawlers.services.scheduler.launcher import RunningJob
from crawlers.services.scheduler.secrets import SecretBox, generate_key
from crawlers.services.scheduler.service import TICK_SECONDS, Scheduler
from crawlers.services.scheduler.store import CONFIGS, FIRES, JOBS, VERSIONS
from crawlers.services.scheduler.triggers import FakeClock
from tests.dbfixtures import PostgresServer

PG_PORT = 5432
CHANGED_BY = "bench"
#: ticks allowed for N due configs to be dispatched (all go in the first one)
MAX_TICKS = 20
#: allocation sites shown for the loaded configs
TOP_SITES = 8
#: rows per INSERT when storing configs in bulk
INSERT_CHUNK = 2000

# -- the no-op launcher ------------------------------------------------------------


class _FakeProcess:
    """What the scheduler reads of a job's process: still running (``returncode``
    None, as a crawl of minutes is when the next tick comes), or ended with 0."""

    pid = 0

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode

    async def wait(self) -> int:
        return 0


class _FakeJob(RunningJob):
    """A job with no process and no folder; its final stats are a good crawl's."""

    def stats(self) -> dict[str, Any]:
        return {"finish_reason": "finished", "item_scraped_count": 1}


class NoopLauncher:
    """Starts nothing: records when each job was handed over, and returns a job that
    keeps running (``ended=False``) or has already ended well."""

    def __init__(self, jobs_dir: Path, *, ended: bool = False) -> None:
        self.jobs_dir = jobs_dir
        self.started: dict[str, float] = {}
        self._process = cast(asyncio.subprocess.Process, _FakeProcess(0 if ended else None))

    async def start(self, job_id: str, task: TaskConfig, args: dict[str, str]) -> RunningJob:
        self.started[job_id] = time.perf_counter()
        return _FakeJob(job_id, task.name, self._process, self.jobs_dir / job_id)

    async def stop(self, job: RunningJob, *, kill_after: float = 30.0) -> None:
        return None


# -- the instrumented scheduler ----------------------------------------------------


class BenchScheduler(Scheduler):
    """The scheduler, timing its tick's phases and noting in which tick each job fired."""

    def __init__(self, config: HydraConfig, db: StateDB, clock: FakeClock) -> None:
        super().__init__(config, db, clock=clock, environ={})
        self.noop = NoopLauncher(Path(tempfile.gettempdir()) / "hydra-bench-jobs")
        self.launcher = self.noop  # type: ignore[assignment]
        self.tick_started = 0.0
        self.fired_in: dict[str, float] = {}
        #: start of the first tick that found configs due: latency counts from there, so
        #: fires left for later ticks (FIRES_PER_TICK) count their wait
        self.due_since: float | None = None
        self.phases: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        names = ("fire_job", "create_job", "transition", "jobs", "job", "heartbeats")
        for name in names:
            setattr(self.store, name, self._timed_call(name, getattr(self.store, name)))
        fire_job = self.store.fire_job

        async def noted(task: str, fire: datetime, by: str, job_id: str, priority: int) -> bool:
            self.fired_in.setdefault(job_id, self.due_since or self.tick_started)
            return await fire_job(task, fire, by, job_id, priority)

        self.store.fire_job = noted  # type: ignore[method-assign,assignment]

    def _timed_call(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.calls[name][0] += 1
                self.calls[name][1] += time.perf_counter() - started

        return timed

    async def tick(self) -> None:
        self.tick_started = time.perf_counter()
        await super().tick()
        self.phases["tick"] += time.perf_counter() - self.tick_started

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
        job_id = await super().enqueue(
            task, fire, attempt=attempt, args=args, due=due, job_id=job_id
        )
        self.fired_in.setdefault(job_id, self.tick_started)
        return job_id

    async def _fire(self, now: datetime) -> None:
        heap = self.configs._heap
        if self.due_since is None and heap and heap[0][0] <= now:
            self.due_since = self.tick_started
        started = time.perf_counter()
        await super()._fire(now)
        self.phases["fire (claim, create, queue)"] += time.perf_counter() - started

    async def _dispatch(self, now: datetime) -> None:
        started = time.perf_counter()
        await super()._dispatch(now)
        self.phases["dispatch (running, launch)"] += time.perf_counter() - started

    async def _watch(self, now: datetime) -> None:
        started = time.perf_counter()
        await super()._watch(now)
        self.phases["watch (judge, settle)"] += time.perf_counter() - started


# -- databases ---------------------------------------------------------------------


class Databases:
    """Fresh state databases: SQLite files in a temp dir, PostgreSQL ones on the server."""

    def __init__(self, workdir: Path, postgres: PostgresServer | None) -> None:
        self.workdir = workdir
        self.postgres = postgres
        self._count = 0

    @property
    def backends(self) -> list[str]:
        return ["sqlite"] + (["postgresql"] if self.postgres is not None else [])

    def create(self, backend: str) -> str:
        self._count += 1
        if backend == "sqlite":
            return f"sqlite:///{self.workdir}/state-{self._count}.db"
        assert self.postgres is not None
        return self.postgres.create_database()

    def drop(self, url: str) -> None:
        if url.startswith("sqlite"):
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        elif self.postgres is not None:
            self.postgres.drop_database(url)


def find_postgres(skip: bool) -> PostgresServer | None:
    if skip:
        print("PostgreSQL: skipped (--skip-postgres)")
        return None
    server = PostgresServer(PG_PORT)
    if not server.answers():
        print(f"PostgreSQL: nothing lets user postgres in on 127.0.0.1:{PG_PORT}; SQLite only")
        return None
    return server


def hydra_config(url: str, workdir: Path, max_running: int, secret_key: str = "") -> HydraConfig:
    return HydraConfig.from_settings(
        Settings({
            "HYDRA_DB_URL": url,
            "HYDRA_API_KEYS": "k",
            "HYDRA_REDIS_URL": "",  # embedded feeds: no other replica, no Redis
            "HYDRA_TOPICS_PATH": str(workdir / "topics"),
            "HYDRA_SCHEDULER_JOBS_DIR": str(workdir / "jobs"),
            "HYDRA_SCHEDULER_MAX_RUNNING": str(max_running),
            "HYDRA_SCHEDULER_SECRET_KEY": secret_key,
            "HYDRA_TASKS_FILE": "",
        })
    )  # fmt: skip


# -- task configs ------------------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")
CRONS = ("*/5 * * * *", "0 * * * *", "30 2 * * *", "15 6 * * 1-5", "0 0 1 * *", "@daily")
INTERVALS = ("30s", "5m", "15m", "1h", "6h", "1d")


def minutely_task(number: int) -> TaskConfig:
    """A dispatch config: due every minute, in UTC."""
    return TaskConfig.model_validate({
        "name": f"due-{number:06d}",
        "spider": "prices",
        "args": {"region": "eu"},
        "schedule": {"cron": "* * * * *"},
    })  # fmt: skip


def varied_task(number: int) -> TaskConfig:
    """A memory config: schedules, secrets and policies as a real fleet mixes them."""
    kind = number % 10
    schedule: dict[str, Any]
    if kind < 4 or kind == 9:
        schedule = {"cron": CRONS[number % len(CRONS)], "timezone": ZONES[number % len(ZONES)]}
    elif kind < 7:
        schedule = {"every": INTERVALS[number % len(INTERVALS)]}
    elif kind == 7:
        schedule = {"at": f"2031-{number % 12 + 1:02d}-15T08:00:00+01:00"}
    else:
        schedule = {"trigger": "external"}
    args: dict[str, Any] = {"region": ("eu", "us", "apac")[number % 3], "page_size": "100"}
    if number % 3 == 0:
        args["token"] = {"env": f"SHOP_TOKEN_{number % 50}"}
    if number % 10 == 1:
        args["api_key"] = {"secret": f"k-{number:08d}-5f0c2a9e"}
    settings: dict[str, Any] = {"CONCURRENT_REQUESTS": 8 + number % 8}
    if number % 4 == 0:
        settings["HYDRA_PROXY_URL"] = {"env": "EGRESS_PROXY_URL"}
    document: dict[str, Any] = {
        "name": f"task-{number:06d}",
        "description": f"prices of shop {number % 997}",
        "spider": ("prices", "web", "s3")[number % 3],
        "args": args,
        "settings": settings,
        "schedule": schedule,
        "priority": number % 101,
        "concurrency": ("skip", "queue", "replace")[number % 3],
        "max_parallel": 1 + number % 3,
    }
    if number % 2 == 0:
        document["retry"] = {"max_retries": 3, "backoff_seconds": 30}
        document["expect"] = {"min_items": 1, "max_errors": 5}
    if kind == 9:
        document["alerts"] = [
            {"webhook": {"env": "ALERT_HOOK"}, "on": ["failure", "zero_items"]},
            {"email": "ops@example.com", "on": ["consecutive_failures"], "consecutive": 3},
        ]
    return TaskConfig.model_validate(document)


def _rows(
    box: SecretBox, tasks: Sequence[TaskConfig], at: datetime
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The ``task_configs`` and ``task_config_versions`` rows ``put_config`` writes for
    a new task (version 1, ``created``)."""
    for task in tasks:
        public, secrets = task.split_secrets()
        config = json.loads(json.dumps(public, allow_nan=False))  # as the store's _json_object
        yield (
            {
                "name": task.name, "config_json": config, "secrets_encrypted": box.seal(secrets),
                "version": 1, "paused": False, "created_at": at, "updated_at": at,
            },
            {
                "task_name": task.name, "version": 1, "change": "created", "config_json": config,
                "paused": False, "changed_by": CHANGED_BY, "changed_at": at,
            },
        )  # fmt: skip


def bulk_insert(db: StateDB, box: SecretBox, tasks: Sequence[TaskConfig]) -> None:
    """Store new task configs as ``put_config`` would, many rows per statement."""
    rows = list(_rows(box, tasks, utcnow()))
    with db.transaction(write=True) as connection:
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            connection.execute(CONFIGS.insert(), [config for config, _ in chunk])
            connection.execute(VERSIONS.insert(), [version for _, version in chunk])


async def store_tasks(scheduler: Scheduler, tasks: Sequence[TaskConfig]) -> None:
    """The first task through ``put_task``, the rest in bulk; the bulk rows are checked
    against what ``put_task`` stored."""
    await scheduler.put_task(tasks[0], CHANGED_BY)
    await asyncio.to_thread(bulk_insert, scheduler.db, scheduler.box, tasks[1:])
    reference = await scheduler.store.get_config(tasks[0].name)
    (bulk,) = [row for row, _ in _rows(scheduler.box, tasks[:1], utcnow())]
    assert reference is not None
    assert (reference.config, reference.version, reference.paused) == (
        bulk["config_json"],
        bulk["version"],
        bulk["paused"],
    ), "bulk rows differ from put_config's"
    history = await scheduler.store.config_history(tasks[-1].name)
    assert [(c.version, c.change) for c in history] == [(1, "created")]


# -- dispatch: hydra -----------------------------------------------------------------


@dataclass
class DispatchRun:
    variant: str
    backend: str
    count: int
    latencies: list[float]
    wall: float
    ticks: int = 1
    phases: dict[str, float] = field(default_factory=dict)
    calls: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.wall


def _next_minute() -> datetime:
    return utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)


async def run_hydra(url: str, workdir: Path, count: int, backend: str) -> DispatchRun:
    clock = FakeClock(utcnow())
    scheduler = BenchScheduler(hydra_config(url, workdir, max_running=count), StateDB(url), clock)
    await scheduler.db.open()
    tasks = [minutely_task(number) for number in range(count)]
    await store_tasks(scheduler, tasks)
    await scheduler.start(ticking=False)
    assert len(scheduler.configs) == count
    due = clock.set(_next_minute())  # every config is due at this instant
    gc.collect()
    started = time.perf_counter()
    ticks = 0
    while len(scheduler.noop.started) < count and ticks < MAX_TICKS:
        await scheduler.tick()
        ticks += 1
        clock.advance(TICK_SECONDS)
    launched = scheduler.noop.started
    wall = max(launched.values()) - started
    latencies = [at - scheduler.fired_in[job_id] for job_id, at in launched.items()]
    await check_jobs(scheduler.db, count, due, ("running",))
    phases = dict(scheduler.phases)
    # the next tick, with the N jobs still running and nothing due
    started = time.perf_counter()
    await scheduler.tick()
    phases["next tick, N running"] = time.perf_counter() - started
    # not stop(): it would stop and judge every job (they never end here)
    await scheduler.feeds.close()
    await scheduler.db.close()
    return DispatchRun(
        "hydra", backend, count, latencies, wall, ticks, phases, dict(scheduler.calls)
    )


async def check_jobs(db: StateDB, count: int, due: datetime, states: Sequence[str]) -> None:
    """One fire and one job per config, all fired at ``due``, all in ``states``."""

    def counts() -> tuple[int, int, int, int]:
        with db.transaction(write=False) as connection:
            fires = connection.execute(select(func.count()).select_from(FIRES)).scalar_one()
            jobs, tasks, good = connection.execute(
                select(
                    func.count(),
                    func.count(JOBS.c.task_name.distinct()),
                    func.count().filter(JOBS.c.state.in_(states) & (JOBS.c.fired_at == due)),
                )
            ).one()
        return int(fires), int(jobs), int(tasks), int(good)

    found = await asyncio.to_thread(counts)
    if found != (count, count, count, count):
        raise SystemExit(f"expected {count} fires, jobs, tasks, jobs as expected; got {found}")


# -- dispatch: the baseline ----------------------------------------------------------


def _claim_and_insert(
    db: StateDB, task: TaskConfig, fire: datetime, job_id: str, worker: str
) -> bool:
    """One transaction: claim the fire (conflicts on (task, fire)), insert the job, running."""
    insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
    now = utcnow()
    claim = (
        insert(FIRES)
        .values(task_name=task.name, fire_at=fire, fired_by=worker, claimed_at=now)
        .on_conflict_do_nothing(index_elements=[FIRES.c.task_name, FIRES.c.fire_at])
        .returning(FIRES.c.id)
    )
    with db.transaction(write=True) as connection:
        if connection.execute(claim).first() is None:
            return False
        connection.execute(
            JOBS.insert().values(
                job_id=job_id, task_name=task.name, attempt=0, priority=task.priority,
                state="running", reason="started", fired_at=fire, scheduled_for=fire,
                started_at=now, heartbeat_at=now, worker=worker, stats_json={},
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    return True


async def run_baseline(
    url: str, workdir: Path, count: int, backend: str, threaded: bool
) -> DispatchRun:
    db = StateDB(url)
    await db.open()
    tasks = [minutely_task(number) for number in range(count)]
    launcher = NoopLauncher(workdir / "jobs")
    now = _next_minute()
    wall_now = now.replace(tzinfo=None) + timedelta(microseconds=1)  # UTC wall time
    gc.collect()
    started = time.perf_counter()
    for task in tasks:
        assert isinstance(task.schedule, CronSchedule)
        fire = croniter(task.schedule.fields, wall_now).get_prev(datetime).replace(tzinfo=UTC)
        job_id = f"{task.name}-{fire:%Y%m%dT%H%M%S}"
        if threaded:
            claimed = await asyncio.to_thread(_claim_and_insert, db, task, fire, job_id, "bench")
        else:
            claimed = _claim_and_insert(db, task, fire, job_id, "bench")
        if claimed:
            await launcher.start(job_id, task, {})
    wall = max(launcher.started.values()) - started
    latencies = [at - started for at in launcher.started.values()]
    await check_jobs(db, count, now, ("running",))
    await db.close()
    variant = "baseline, to_thread" if threaded else "baseline"
    return DispatchRun(variant, backend, count, latencies, wall)


# -- memory ---------------------------------------------------------------------------


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    """Set ``VmHWM`` back to the current RSS (Linux: ``5`` to ``clear_refs``)."""
    # if refused, the peak also counts what came before the load (imports, migrations)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


async def prepare_memory_db(url: str, workdir: Path, count: int, key: str) -> None:
    scheduler = Scheduler(
        hydra_config(url, workdir, 4, key), StateDB(url), clock=FakeClock(utcnow()), environ={}
    )
    await scheduler.db.open()
    await store_tasks(scheduler, [varied_task(number) for number in range(count)])
    await scheduler.db.close()


async def _opened(url: str, workdir: Path, key: str, clock: FakeClock) -> Scheduler:
    scheduler = Scheduler(hydra_config(url, workdir, 4, key), StateDB(url), clock=clock)
    scheduler.launcher = NoopLauncher(workdir / "jobs")  # type: ignore[assignment]
    await scheduler.db.open()
    await scheduler.feeds.open()
    await scheduler.store.config_versions()  # the pool's connection is open
    return scheduler


async def measure_load(url: str, sample_url: str, workdir: Path) -> dict[str, Any]:
    """In a fresh process: ``configs.load()`` of every config (time, RSS growth, peak
    RSS), an idle tick and a resync at that size, then tracemalloc on a sample's load."""
    key = os.environ["BENCH_SCHEDULER_SECRET_KEY"]
    clock = FakeClock(utcnow())
    scheduler = await _opened(url, workdir, key, clock)
    gc.collect()
    _reset_peak_rss()
    before = _status("VmRSS")
    started = time.perf_counter()
    await scheduler.configs.load()
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    gc.collect()
    after = _status("VmRSS")
    # a tick with nothing due (the first fire is a second away), and the periodic
    # resync (a query and a comparison of every config's version)
    clock.set(scheduler.configs._heap[0][0] - timedelta(seconds=1))
    scheduler.configs._synced = time.monotonic()  # not the resync: it is timed apart
    started = time.perf_counter()
    await scheduler.tick()
    idle_tick = time.perf_counter() - started
    started = time.perf_counter()
    changed = await scheduler.configs.resync(force=True)
    resync = time.perf_counter() - started
    assert changed == [], changed[:5]
    loaded = len(scheduler.configs)
    await scheduler.stop()
    del scheduler
    # tracemalloc makes the load ~10 times slower: it measures a sample's load
    sample = await _opened(sample_url, workdir, key, clock)
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    await sample.configs.load()
    traced_seconds = time.perf_counter() - started
    gc.collect()  # what is left is held, not garbage waiting for the collector
    retained, traced_peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    top = [
        (_short(str(stat.traceback[0])), stat.size, stat.count)
        for stat in snapshot.statistics("lineno")[:TOP_SITES]
    ]
    del snapshot
    sampled = len(sample.configs)
    await sample.stop()
    return {
        "loaded": loaded, "load_seconds": seconds, "rss_before": before, "rss_after": after,
        "rss_peak": peak, "idle_tick_seconds": idle_tick, "resync_seconds": resync,
        "sampled": sampled, "traced_retained": retained, "traced_peak": traced_peak,
        "traced_load_seconds": traced_seconds, "top": top,
    }  # fmt: skip


def _short(where: str) -> str:
    """A traceback line without the venv's or the checkout's prefix."""
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def run_memory(databases: Databases, workdir: Path, count: int, sample: int) -> dict[str, Any]:
    key = generate_key()
    url = databases.create("sqlite")
    sample_url = databases.create("sqlite") if sample < count else url
    try:
        started = time.perf_counter()
        asyncio.run(prepare_memory_db(url, workdir, count, key))
        if sample_url != url:
            asyncio.run(prepare_memory_db(sample_url, workdir, sample, key))
        elapsed = time.perf_counter() - started
        print(f"  stored {count:,} (and {sample:,}) configs in {elapsed:.1f} s")
        started = time.perf_counter()
        env = clean_env()
        env["BENCH_SCHEDULER_SECRET_KEY"] = key
        command = [sys.executable, "-m", "benchmarks.scheduler", "--load-child", url]
        command += ["--sample-url", sample_url, "--workdir", str(workdir)]
        child = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if child.returncode != 0:
            raise SystemExit(f"load measurement failed:\n{child.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"  measured in {time.perf_counter() - started:.1f} s (the sample's load under "
            f"tracemalloc: {result['traced_load_seconds']:.1f} s)"
        )
    finally:
        databases.drop(url)
        if sample_url != url:
            databases.drop(sample_url)
    if (result["loaded"], result["sampled"]) != (count, sample):
        raise SystemExit(f"{result['loaded']} of {count}, {result['sampled']} of {sample} loaded")
    return result


# -- running and reporting -----------------------------------------------------------

VARIANTS = ("hydra", "baseline", "baseline, to_thread")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_variant(
    variant: str, url: str, workdir: Path, count: int, backend: str
) -> Coroutine[Any, Any, DispatchRun]:
    if variant == "hydra":
        return run_hydra(url, workdir, count, backend)
    return run_baseline(url, workdir, count, backend, threaded=variant.endswith("to_thread"))


def run_dispatch(
    databases: Databases, workdir: Path, count: int, rounds: int
) -> dict[str, list[DispatchRun]]:
    """Each round runs every variant once, the order rotated, each on a fresh database."""
    results: dict[str, list[DispatchRun]] = defaultdict(list)
    for backend in databases.backends:
        for round_number in range(rounds):
            shift = round_number % len(VARIANTS)
            for name in VARIANTS[shift:] + VARIANTS[:shift]:
                url = databases.create(backend)
                try:
                    run = asyncio.run(measure_variant(name, url, workdir, count, backend))
                finally:
                    databases.drop(url)
                results[f"{backend}/{name}"].append(run)
                print(
                    f"  {backend} round {round_number + 1} {name:>19}: {run.rate:8.0f} "
                    f"dispatches/s, p50 {percentile(run.latencies, 0.5) * 1000:8.1f} ms, "
                    f"p99 {percentile(run.latencies, 0.99) * 1000:8.1f} ms"
                )
    return results


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def report_dispatch(results: dict[str, list[DispatchRun]], count: int) -> list[str]:
    print(f"\nDispatch: {count:,} configs due in the same minute (median over rounds)\n")
    print("| backend | variant | dispatches/s | p50 ms | p99 ms | max ms | ticks |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for key, runs in results.items():
        backend, variant = key.split("/")
        rate = statistics.median(run.rate for run in runs)
        p50 = statistics.median(percentile(run.latencies, 0.5) for run in runs)
        p99 = statistics.median(percentile(run.latencies, 0.99) for run in runs)
        top = statistics.median(max(run.latencies) for run in runs)
        ticks = max(run.ticks for run in runs)
        print(
            f"| {backend} | {variant} | {rate:,.0f} | {_ms(p50)} | {_ms(p99)} | {_ms(top)} "
            f"| {ticks} |"
        )
    for backend in sorted({key.split("/")[0] for key in results}):
        hydra = results[f"{backend}/hydra"]
        for variant in ("baseline", "baseline, to_thread"):
            ratios = [
                a.rate / b.rate for a, b in zip(hydra, results[f"{backend}/{variant}"], strict=True)
            ]
            line = (
                f"{backend}: hydra / {variant} = {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f} .. {max(ratios):.2f})"
            )
            print(line)
            notes.append(line)
        last = hydra[-1]
        print(f"{backend}: hydra's tick, seconds by phase (last round): " + ", ".join(
            f"{name} {seconds:.2f}" for name, seconds in last.phases.items()
        ))  # fmt: skip
        print(f"{backend}: hydra's store calls (last round): " + ", ".join(
            f"{name} {int(n)} x {total / n * 1e6:.0f} µs"
            for name, (n, total) in last.calls.items() if n
        ))  # fmt: skip
        run = hydra[-1]
        notes.insert(
            len(notes) - 2,
            f"{backend}: N={count:,}, hydra {run.rate:,.0f} dispatches/s, "
            f"p50 {_ms(percentile(run.latencies, 0.5))} ms, "
            f"p99 {_ms(percentile(run.latencies, 0.99))} ms; baseline "
            f"{statistics.median(r.rate for r in results[f'{backend}/baseline']):,.0f} /s; "
            f"next tick with N running {run.phases['next tick, N running']:.1f} s",
        )
    return notes


def report_memory(result: dict[str, Any], count: int) -> list[str]:
    mib = 1024 * 1024
    growth = result["rss_after"] - result["rss_before"]
    peak = result["rss_peak"] - result["rss_before"]
    sample, retained = result["sampled"], result["traced_retained"]
    print(f"\nMemory: {count:,} varied configs loaded into the ConfigCache\n")
    print("| figure | value |")
    print("| --- | ---: |")
    rows = [
        ("configs.load()", f"{result['load_seconds']:.2f} s"),
        ("RSS growth, after load and gc", f"{growth / mib:,.1f} MiB"),
        ("RSS growth per config", f"{growth / count:,.0f} B"),
        ("peak RSS growth during load (VmHWM)", f"{peak / mib:,.1f} MiB"),
        ("process RSS after load", f"{result['rss_after'] / mib:,.1f} MiB"),
        (f"tracemalloc retained per config ({sample:,} sampled)", f"{retained / sample:,.0f} B"),
        (
            f"tracemalloc peak during load, per config ({sample:,} sampled)",
            f"{result['traced_peak'] / sample:,.0f} B",
        ),
        ("idle tick (nothing due)", f"{result['idle_tick_seconds'] * 1000:,.1f} ms"),
        ("forced resync (versions compared)", f"{result['resync_seconds'] * 1000:,.1f} ms"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nWhere the retained bytes were allocated ({sample:,} sampled, by line):")
    for where, size, blocks in result["top"]:
        print(f"  {size / sample:7,.0f} B/config  {blocks / sample:5.1f} blocks/config  {where}")
    return [
        f"memory: M={count:,}, load {result['load_seconds']:.1f} s, RSS +{growth / mib:,.0f} MiB "
        f"({growth / count:,.0f} B/config), peak +{peak / mib:,.0f} MiB; tracemalloc retained "
        f"{retained / sample:,.0f} B/config, peak {result['traced_peak'] / sample:,.0f} B/config"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=None, help="N due configs (10000)")
    parser.add_argument("--memory-configs", type=int, default=None, help="M loaded (100000)")
    parser.add_argument(
        "--trace-configs", type=int, default=None, help="loaded under tracemalloc (5000)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="N=1000, M=10000, 2000 traced")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    parser.add_argument("--sample-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        result = asyncio.run(measure_load(args.load_child, args.sample_url, Path(args.workdir)))
        print(json.dumps(result))
        return 0
    count = args.configs or (1000 if args.quick else 10_000)
    memory_count = args.memory_configs or (10_000 if args.quick else 100_000)
    sample = min(memory_count, args.trace_configs or (2000 if args.quick else 5000))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    databases = Databases(workdir, find_postgres(args.skip_postgres))
    notes: list[str] = []
    try:
        print(f"Dispatch of {count:,} due configs, {args.rounds} round(s):")
        results = run_dispatch(databases, workdir, count, args.rounds)
        notes += report_dispatch(results, count)
        if not args.skip_memory:
            print(f"\nMemory with {memory_count:,} configs:")
            result = run_memory(databases, workdir, memory_count, sample)
            notes += report_memory(result, memory_count)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nFor a note ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores):")
    for line in notes:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
