"""The operator console's job list with 100,000 jobs: time to first byte, a full render
in Chromium, and how long a job's state change takes to show in an open console.

``python -m benchmarks.console [--jobs 100000] [--requests 50] [--loads 30] [--changes 100]
[--postgres]`` (about 1.5 minutes on SQLite)

**Data and server** are ``benchmarks.job_list``'s: N jobs bulk-inserted (40 tasks, states
mixed as in a long-running installation, every transition), then the real scheduler app
(its engine not ticking, no Redis) under uvicorn in its own process. The console's first
page shows the same 50 newest jobs that ``GET /jobs?limit=50`` returns.

**TTFB** (``job_list.Api``'s raw keep-alive socket, request by request interleaved):
``GET /jobs?limit=50`` with the API key (JSON: the baseline) against ``GET /ui/jobs`` with
a console session cookie (the same query, plus the task names of the filter, the template
and the security headers). Both bodies are checked to hold the 50 jobs.

**Full render**: Debian's Chromium (Playwright, headless) navigates to ``/ui/jobs`` until
the load event (the stylesheet and the deferred script included), read from the page's
Navigation Timing entry; interleaved with navigations to the JSON ``/jobs?limit=50``
(rendered by Chromium as text: the least a browser can do with the same data).

**Delay to an open console**: ``/ui/jobs`` stays open in Chromium with a MutationObserver
noting, for each row, when each state first shows (``performance.timeOrigin +
performance.now()``, wall clock, same machine as this process's ``time.time()``). Then:

- *this replica*: ``POST /tasks/{name}/trigger`` through the API (the change is written
  and the console's feed woken by the same process), measured from the request sent to
  the new row showing; then ``POST /jobs/{id}/cancel``, to the row showing ``cancelled``;
- *another replica*: a job and its ``pending`` transition inserted straight into the
  database by this process (as a second scheduler would), from the commit to the row
  showing; the console sees these only through its poll (every 0.5 s).

Changes are paced (one at a time, a random 50-250 ms apart; other replicas' 50-550 ms,
so they land at any point of the poll), so each is measured alone.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import create_engine, func, select

from benchmarks.job_list import API_KEY, LIMIT, Api, databases, populate
from crawlers.console.auth import COOKIE
from crawlers.console.live import JobFeed
from crawlers.fetchers.capture import CHROMIUM_ARGS, CHROMIUM_PATH
from crawlers.services.scheduler.store import JOBS, TRANSITIONS

WARMUP = 5
#: how often the console's feed reads the database for other replicas' changes
POLL: float = inspect.signature(JobFeed).parameters["poll_seconds"].default
TASK = "bench-live"
#: in the open page: when each ``job:state`` first showed in the table
OBSERVER = """() => {
    window.__seen = {};
    const note = () => {
        const now = performance.timeOrigin + performance.now();
        for (const row of document.querySelectorAll("#jobs tbody tr[data-job]")) {
            const key = row.dataset.job + ":" + row.cells[3].textContent;
            if (!(key in window.__seen)) window.__seen[key] = now;
        }
    };
    note();
    new MutationObserver(note).observe(document.querySelector("#jobs tbody"),
        {subtree: true, childList: true, characterData: true});
}"""
NAVIGATION = """() => {
    const [nav] = performance.getEntriesByType("navigation");
    return nav && nav.loadEventEnd > 0 ? {ttfb: nav.responseStart - nav.requestStart,
        dcl: nav.domContentLoadedEventEnd - nav.startTime, load: nav.loadEventEnd - nav.startTime,
        bytes: nav.transferSize} : null;
}"""


class _WithCookie:
    """``Api``'s socket, its requests carrying the console's session cookie."""

    def __init__(self, sock: socket.socket, cookie: str) -> None:
        self.sock = sock
        self.header = f"Cookie: {COOKIE}={cookie}\r\n\r\n".encode()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data[:-2] + self.header)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)


@contextmanager
def as_console(api: Api, cookie: str) -> Iterator[Api]:
    plain = api.sock
    api.sock = cast(socket.socket, _WithCookie(plain, cookie))
    try:
        yield api
    finally:
        api.sock = plain


def sign_in(base: str) -> str:
    """A console session for the benchmark's operator key (the sign-in form's POST)."""
    answer = httpx.post(f"{base}/ui/login", data={"api_key": API_KEY}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer.cookies[COOKIE]


def ttfb(api: Api, cookie: str, requests: int) -> dict[str, list[float]]:
    target = f"/jobs?limit={LIMIT}"
    out: dict[str, list[float]] = {"json": [], "json total": [], "ui": [], "ui total": []}
    for attempt in range(WARMUP + requests):
        first, whole, body = api.get(target)
        assert body.count(b'"job_id"') == LIMIT
        with as_console(api, cookie):
            ui_first, ui_whole, page = api.get("/ui/jobs")
        assert page.count(b"<tr data-job=") == LIMIT, page[:300]
        if attempt >= WARMUP:
            out["json"].append(first)
            out["json total"].append(whole)
            out["ui"].append(ui_first)
            out["ui total"].append(ui_whole)
    return out


def render(browser: Browser, base: str, cookie: str, loads: int) -> dict[str, list[float]]:
    context = browser.new_context(extra_http_headers={"X-API-Key": API_KEY})
    context.add_cookies([{"name": COOKIE, "value": cookie, "url": base}])
    page = context.new_page()
    out: dict[str, list[float]] = {}
    for attempt in range(WARMUP + loads):
        for name, url in (("ui", f"{base}/ui/jobs"), ("json", f"{base}/jobs?limit={LIMIT}")):
            page.goto(url, wait_until="load")
            handle = page.wait_for_function(NAVIGATION)
            timing: dict[str, float] = handle.json_value()
            if name == "ui":
                assert page.locator("#jobs tbody tr[data-job]").count() == LIMIT
            if attempt >= WARMUP:
                for key in ("ttfb", "dcl", "load"):
                    out.setdefault(f"{name} {key}", []).append(timing[key] / 1000)
    context.close()
    return out


def open_console(browser: Browser, base: str, cookie: str) -> Page:
    context = browser.new_context()
    context.add_cookies([{"name": COOKIE, "value": cookie, "url": base}])
    page = context.new_page()
    page.goto(f"{base}/ui/jobs")
    page.wait_for_function("() => document.getElementById('live-status').textContent === 'live'")
    page.evaluate(OBSERVER)
    return page


def _pause(rng: random.Random, longest: float = 0.25) -> None:
    time.sleep(rng.uniform(0.05, longest))


SHOWN = """(key) => {
    let first = null;
    for (const [seen, at] of Object.entries(window.__seen)) {
        if (seen === key || (key.endsWith(":") && seen.startsWith(key))) {
            first = first === null ? at : Math.min(first, at);
        }
    }
    return first;
}"""


def _shown(page: Page, key: str, timeout: float = 10) -> float:
    """When the page first showed ``job:state`` (``job:``: any state), in seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen: float | None = page.evaluate(SHOWN, key)
        if seen is not None:
            return seen / 1000
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} never showed in the console")
        time.sleep(0.01)


def delays(page: Page, base: str, url: str, changes: int) -> dict[str, list[float]]:
    rng = random.Random(7)
    api = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY})
    task = {"spider": "prices", "schedule": {"trigger": "external"}}
    assert api.put(f"/tasks/{TASK}", json=task).status_code == 200
    out: dict[str, list[float]] = {"this replica, new job": [], "this replica, cancelled": []}
    for _ in range(WARMUP + changes):
        sent = time.time()
        job_id = api.post(f"/tasks/{TASK}/trigger").json()["job_id"]
        appeared = _shown(page, f"{job_id}:")
        _pause(rng)
        cancel_sent = time.time()
        assert api.post(f"/jobs/{job_id}/cancel").json()["cancelled"] is True
        cancelled = _shown(page, f"{job_id}:cancelled")
        out["this replica, new job"].append(appeared - sent)
        out["this replica, cancelled"].append(cancelled - cancel_sent)
        _pause(rng)
    api.close()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    other: list[float] = []
    for number in range(WARMUP + changes):
        job_id = f"other-replica-{number:05d}"
        now = datetime.now(UTC)
        with engine.begin() as connection:
            connection.execute(
                JOBS.insert(),
                {"job_id": job_id, "task_name": TASK, "attempt": 0, "priority": 50,
                 "state": "pending", "reason": "", "fired_at": now, "scheduled_for": now,
                 "stats_json": {}, "created_at": now, "updated_at": now},
            )  # fmt: skip
            connection.execute(
                TRANSITIONS.insert(),
                {"job_id": job_id, "from_state": None, "to_state": "pending", "at": now,
                 "reason": "created"},
            )  # fmt: skip
        committed = time.time()
        other.append(_shown(page, f"{job_id}:") - committed)
        _pause(rng, 0.05 + POLL)  # any phase of the console's poll, not just after one
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).where(JOBS.c.task_name == TASK))
        assert count.scalar_one() == 2 * (WARMUP + changes)
    engine.dispose()
    out["another replica, new job"] = other
    return {name: values[WARMUP:] for name, values in out.items()}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


LABELS = {
    "json": "TTFB `GET /jobs?limit=50` (JSON, baseline)",
    "ui": "TTFB `GET /ui/jobs`",
    "json total": "whole response `GET /jobs?limit=50`",
    "ui total": "whole response `GET /ui/jobs`",
    "json ttfb": "Chromium: TTFB of `/jobs?limit=50` (baseline)",
    "ui ttfb": "Chromium: TTFB of `/ui/jobs`",
    "json dcl": "Chromium: DOMContentLoaded, `/jobs?limit=50`",
    "ui dcl": "Chromium: DOMContentLoaded, `/ui/jobs`",
    "json load": "Chromium: load event, `/jobs?limit=50` (baseline)",
    "ui load": "Chromium: load event, `/ui/jobs` (full render)",
    "this replica, new job": "delay: triggered job -> its row (this replica)",
    "this replica, cancelled": "delay: cancel -> row shows `cancelled` (this replica)",
    "another replica, new job": "delay: job written by another replica -> its row",
}


def report(backend: str, figures: dict[str, list[float]]) -> None:
    print(f"\n{backend}\n")
    print("| figure | p50 ms | p99 ms | min .. max ms | n |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, values in figures.items():
        print(
            f"| {LABELS[key]} | {_p(values, 0.5):.2f} | {_p(values, 0.99):.2f} "
            f"| {min(values) * 1000:.2f} .. {max(values) * 1000:.2f} | {len(values)} |"
        )
    print()
    json_p50 = statistics.median(figures["json"])
    print(f"TTFB: /ui/jobs {_p(figures['ui'], 0.5):.2f} ms p50 against {json_p50 * 1000:.2f} ms "
          f"for the JSON list ({statistics.median(figures['ui']) / json_p50:.1f}x)")  # fmt: skip
    print(f"Full render: /ui/jobs loaded in {_p(figures['ui load'], 0.5):.1f} ms p50, "
          f"{_p(figures['ui load'], 0.99):.1f} ms p99 (JSON in the browser: "
          f"{_p(figures['json load'], 0.5):.1f} ms p50)")  # fmt: skip
    for key in ("this replica, new job", "this replica, cancelled", "another replica, new job"):
        values = figures[key]
        print(f"{LABELS[key]}: {_p(values, 0.5):.1f} ms p50, {_p(values, 0.99):.1f} ms p99")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--loads", type=int, default=30)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL too (after SQLite)")
    args = parser.parse_args()
    print(f"{args.jobs:,} jobs, {args.requests} requests, {args.loads} loads, "
          f"{args.changes} changes of each kind; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="hydra-console-") as tmp,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS)
        )
        workdir = Path(tmp)
        for backend, url in databases(workdir, not args.postgres):
            started = time.perf_counter()
            populate(url, args.jobs)
            print(f"{backend}: {args.jobs:,} jobs in {time.perf_counter() - started:.1f} s")
            api = Api(url, workdir)
            base = f"http://127.0.0.1:{api.port}"
            try:
                cookie = sign_in(base)
                figures = ttfb(api, cookie, args.requests)
                figures.update(render(browser, base, cookie, args.loads))
                page = open_console(browser, base, cookie)
                figures.update(delays(page, base, url, args.changes))
                page.context.close()
            finally:
                api.close()
            report(backend, figures)
        browser.close()


if __name__ == "__main__":
    main()
