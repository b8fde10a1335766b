"""The scheduler's job list with 100,000 jobs in the database: ``GET /jobs`` against
the same SQL run directly.

``python -m benchmarks.job_list [--jobs 100000] [--requests 50] [--skip-postgres]``

**Data.** A fresh state database (``StateDB.upgrade()``: every migration, so every
index) gets N jobs bulk-inserted with SQLAlchemy Core into ``scheduled_jobs`` and
``job_transitions``, as ``SchedulerStore`` writes them: 40 tasks, ids in firing
order over the last 20 days, states mixed as in a long-running installation (80 %
succeeded, 8 % failed, 4 % cancelled, 2 % timed out, 2 % running, 2 % queued, 2 %
pending), each job with the transitions of its path from ``pending`` (about 3.7 per
job), final stats on finished jobs. Then ``ANALYZE``, as autovacuum would have done.

**API.** ``create_app`` with a real :class:`Scheduler` on that database, its engine not
ticking (``start(ticking=False)``: the list is measured, not the dispatcher), served by
uvicorn in its own process on a free loopback port with the project's settings
(``HYDRA_API_KEYS``, no Redis: embedded feeds). The client is a raw keep-alive
socket in this process sending ``GET /jobs?...&limit=50`` with the key: **TTFB** is
from the request's last byte sent to the response's first byte received, **total**
to its last byte (``Content-Length``). Each body is parsed and checked: 50 jobs,
newest first, of the asked task or state, and the same ids as the baseline's rows.

**Baseline**, same run, same database: the SQL behind the page
(``crawlers.services.scheduler.store.jobs_query``, the very ``Select`` the store
executes) on one open SQLAlchemy connection in this process,
``connection.execute(query).all()``: no HTTP, no thread hop, no JSON, no dataclass.

Pages: the first (no filter), one task's, one state's (``failed``), and a deep page
(``before`` = an id 90 % of the way down the list). Each is requested R times after 5
warm-up requests, API and baseline alternating; p50 and p99 of each.

Then the retention pass (``SchedulerStore.prune_jobs``) on the same database: with
nothing expired (its usual minute), and one full batch of 1,000 jobs.

SQLite always; PostgreSQL too when ``postgres@127.0.0.1:5432`` answers (a throw-away
database, dropped after).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from benchmarks.runs import ROOT, clean_env
from crawlers.db.state import StateDB
from crawlers.services.scheduler.store import JOBS, TRANSITIONS, jobs_query
from tests.dbfixtures import PostgresServer

PG_PORT = 5432
API_KEY = "bench-key"
TASKS = 40
#: (state, share in 1000)
MIX = (
    ("succeeded", 800), ("failed", 80), ("cancelled", 40), ("timed_out", 20),
    ("running", 20), ("queued", 20), ("pending", 20),
)  # fmt: skip
PATHS = {
    "pending": ["pending"],
    "queued": ["pending", "queued"],
    "running": ["pending", "queued", "running"],
    "succeeded": ["pending", "queued", "running", "succeeded"],
    "failed": ["pending", "queued", "running", "failed"],
    "cancelled": ["pending", "cancelled"],
    "timed_out": ["pending", "queued", "running", "timed_out"],
}
BATCH = 5000
WARMUP = 5
LIMIT = 50


def _states(count: int, rng: random.Random) -> list[str]:
    population = [state for state, share in MIX for _ in range(share)]
    return [rng.choice(population) for _ in range(count)]


def populate(url: str, count: int) -> None:
    """``count`` jobs and their transitions, bulk-inserted."""
    rng = random.Random(13)
    states = _states(count, rng)
    start = datetime.now(UTC) - timedelta(days=20)
    step = timedelta(days=20) / count
    db = StateDB(url)
    db.upgrade()
    db.dispose()
    engine = create_engine(url)
    for first in range(0, count, BATCH):
        jobs: list[dict[str, Any]] = []
        transitions: list[dict[str, Any]] = []
        for number in range(first, min(first + BATCH, count)):
            state = states[number]
            fired = start + step * number
            started = fired + timedelta(seconds=2) if state not in ("pending", "queued") else None
            if state == "cancelled":
                started = None
            final = state in ("succeeded", "failed", "cancelled", "timed_out")
            finished = fired + timedelta(seconds=rng.randint(30, 900)) if final else None
            job_id = f"task-{number % TASKS:02d}-{number:07d}"
            jobs.append(
                {
                    "job_id": job_id, "task_name": f"task-{number % TASKS:02d}",
                    "attempt": 0 if rng.random() < 0.9 else 1, "priority": 50, "state": state,
                    "reason": "exit 0, expectations met" if state == "succeeded" else state,
                    "fired_at": fired, "scheduled_for": fired, "started_at": started,
                    "finished_at": finished,
                    "heartbeat_at": started if state == "running" else None,
                    "worker": f"host-{number % 4}/pid-{1000 + number % 97}" if started else None,
                    "stats_json": {"item_scraped_count": rng.randint(0, 5000),
                                   "finish_reason": "finished"} if final else {},
                    "log_ref": f"output/scheduler-jobs/{job_id}/log.txt" if started else None,
                    "created_at": fired, "updated_at": finished or started or fired,
                }
            )  # fmt: skip
            path = PATHS[state]
            for previous, current in zip([None, *path], path, strict=False):
                transitions.append(
                    {
                        "job_id": job_id, "from_state": previous, "to_state": current,
                        "at": finished if current == state and final else fired,
                        "reason": "created" if previous is None else current,
                    }
                )  # fmt: skip
        with engine.begin() as connection:
            connection.execute(JOBS.insert(), jobs)
            connection.execute(TRANSITIONS.insert(), transitions)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("ANALYZE"))
    engine.dispose()


# -- the API in its own process ----------------------------------------------------


def serve(url: str, port: int) -> None:
    """The scheduler's app on ``url``, its engine not ticking (``--serve``)."""
    import uvicorn
    from scrapy.settings import Settings

    from crawlers.config import HydraConfig
    from crawlers.services.command import freeze_startup_objects
    from crawlers.services.scheduler.app import create_app
    from crawlers.services.scheduler.service import Scheduler

    class ListOnly(Scheduler):
        async def start(self, *, ticking: bool = True) -> None:
            await super().start(ticking=False)

    config = HydraConfig.from_settings(
        Settings({"HYDRA_DB_URL": url, "HYDRA_API_KEYS": API_KEY, "HYDRA_REDIS_URL": ""})
    )
    app = create_app(config, ListOnly(config, StateDB(url)))
    freeze_startup_objects()  # as `scrapy scheduler` does
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Api:
    def __init__(self, url: str, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.log = workdir / f"api-{self.port}.log"
        command = [sys.executable, "-m", "benchmarks.job_list", "--serve", url, str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not start: {self.log.read_text()}") from None
                time.sleep(0.1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, target: str) -> tuple[float, float, bytes]:
        """(TTFB, total) in seconds and the body of ``GET target``."""
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"X-API-Key: {API_KEY}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        self.sock.sendall(request)
        sent = time.perf_counter()
        data = self.sock.recv(65536)
        first = time.perf_counter()
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status:
            raise RuntimeError(f"{target}: {status.decode()} {body[:300]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += self.sock.recv(65536)
        return first - sent, time.perf_counter() - sent, body

    def close(self) -> None:
        self.sock.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- measuring ----------------------------------------------------------------------


def pages(url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        top = int(connection.execute(text("SELECT max(id) FROM scheduled_jobs")).scalar_one())
    engine.dispose()
    return {
        "first page": {},
        "task": {"task": "task-07"},
        "state=failed": {"state": "failed"},
        "deep (before)": {"before": max(LIMIT + 1, top // 10)},
    }


def _query(params: dict[str, Any]) -> Any:
    return jobs_query(params.get("task"), params.get("state"), LIMIT, params.get("before"))


def _check(name: str, params: dict[str, Any], body: bytes, ids: list[int]) -> None:
    jobs = json.loads(body)
    got = [job["id"] for job in jobs]
    assert len(jobs) == LIMIT, (name, len(jobs))
    assert got == sorted(got, reverse=True) == ids, name
    assert all(job["task"] == params.get("task", job["task"]) for job in jobs), name
    assert all(job["state"] == params.get("state", job["state"]) for job in jobs), name
    if "before" in params:
        assert got[0] < params["before"], name


def measure(url: str, api: Api, requests: int) -> list[dict[str, Any]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    rows: list[dict[str, Any]] = []
    with engine.connect() as connection:
        for name, params in pages(url).items():
            target = "/jobs?" + "&".join(
                f"{key}={value}" for key, value in {**params, "limit": LIMIT}.items()
            )
            query = _query(params)
            ttfb: list[float] = []
            total: list[float] = []
            direct: list[float] = []
            for attempt in range(WARMUP + requests):
                first, whole, body = api.get(target)
                started = time.perf_counter()
                result = connection.execute(query).all()
                took = time.perf_counter() - started
                connection.rollback()
                _check(name, params, body, [row.id for row in result])
                if attempt >= WARMUP:
                    ttfb.append(first)
                    total.append(whole)
                    direct.append(took)
            rows.append(
                {"page": name, "ttfb": ttfb, "total": total, "direct": direct, "bytes": len(body)}
            )
    engine.dispose()
    return rows


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def report(backend: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{backend}")
    print(
        "| page | TTFB p50 / p99 ms | total p50 / p99 ms | SQL alone p50 / p99 ms "
        "| total / SQL (p50) | body |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = statistics.median(row["total"]) / statistics.median(row["direct"])
        print(
            f"| {row['page']} | {_p(row['ttfb'], 0.5):.2f} / {_p(row['ttfb'], 0.99):.2f} "
            f"| {_p(row['total'], 0.5):.2f} / {_p(row['total'], 0.99):.2f} "
            f"| {_p(row['direct'], 0.5):.2f} / {_p(row['direct'], 0.99):.2f} "
            f"| {ratio:.1f}x | {row['bytes']:,} B |"
        )


def databases(workdir: Path, skip_postgres: bool) -> Iterator[tuple[str, str]]:
    yield "sqlite", f"sqlite:///{workdir}/state.db"
    if skip_postgres:
        return
    server = PostgresServer(PG_PORT)
    if not server.answers():
        print(f"PostgreSQL: nothing lets user postgres in on 127.0.0.1:{PG_PORT}; SQLite only")
        return
    url = server.create_database()
    try:
        yield "postgresql", url
    finally:
        server.drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("URL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    print(f"{args.jobs:,} jobs, {args.requests} requests per page, limit={LIMIT}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hydra-job-list-") as tmp:
        workdir = Path(tmp)
        for backend, url in databases(workdir, args.skip_postgres):
            started = time.perf_counter()
            populate(url, args.jobs)
            engine = create_engine(url)
            with engine.connect() as connection:
                counts = connection.execute(
                    text("SELECT (SELECT count(*) FROM scheduled_jobs), "
                         "(SELECT count(*) FROM job_transitions)")
                ).one()  # fmt: skip
            engine.dispose()
            assert counts[0] == args.jobs, counts
            print(f"{backend}: {counts[0]:,} jobs, {counts[1]:,} transitions inserted in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            api = Api(url, workdir)
            try:
                rows = measure(url, api, args.requests)
            finally:
                api.close()
            report(backend, rows)
            print(prune_costs(url))


def prune_costs(url: str) -> str:
    """The scheduler's retention pass on the same database (after the list was
    measured): with nothing expired (the usual minute), and a full batch of 1,000."""
    import asyncio

    from crawlers.services.scheduler.store import SchedulerStore

    async def timed() -> str:
        db = StateDB(url)
        await db.open()
        store = SchedulerStore(db)
        now = datetime.now(UTC)
        nothing: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            assert await store.prune_jobs(now - timedelta(days=30), 1000) == 0
            nothing.append(time.perf_counter() - started)
        started = time.perf_counter()
        removed = await store.prune_jobs(now - timedelta(days=10), 1000)
        batch = time.perf_counter() - started
        await db.close()
        assert removed == 1000, removed
        return (
            f"retention pass: nothing expired {statistics.median(nothing) * 1000:.2f} ms "
            f"(median of 5), a batch of 1,000 jobs with their transitions {batch * 1000:.0f} ms"
        )

    return asyncio.run(timed())


if __name__ == "__main__":
    main()
