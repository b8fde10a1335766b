"""Jobs: the live table, a job's page (history, stats, live log tail, first items), cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from crawlers.console.auth import Changer, Viewer
from crawlers.console.live import RELOAD, sse, stats_view, tail_file
from crawlers.db.scheduler_models import JOB_STATES
from crawlers.models.job_status import FIRST_ITEMS_KEY

if TYPE_CHECKING:
    from crawlers.console.app import Console

PAGE = 50
#: how often an open job page gets the job's stats again
STATS_SECONDS = 2.0
#: how often a page opened before its job started looks for the job's log
LOG_WAIT_SECONDS = 0.5
#: an SSE comment this often keeps proxies from closing an idle stream
KEEPALIVE_SECONDS = 15.0
NOTICES = {"cancelled": "The job was cancelled.", "not-cancelled": "The job had already ended."}


def _moment(text: str) -> datetime | None:
    """A ``datetime-local`` value (read as UTC), or None when empty or not a date."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None
    except ValueError:
        return None


def router(console: Console) -> APIRouter:
    api = APIRouter()
    store = console.scheduler.store

    @api.get("/jobs")
    async def jobs_page(
        request: Request,
        session: Viewer,
        task: Annotated[str, Query(max_length=64)] = "",
        state: Annotated[str, Query(max_length=16)] = "",
        since: Annotated[str, Query(max_length=32)] = "",
        until: Annotated[str, Query(max_length=32)] = "",
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> HTMLResponse:
        state = state if state in JOB_STATES else ""
        jobs = await store.jobs(
            task or None, state or None, PAGE, before,  # type: ignore[arg-type]
            since=_moment(since), until=_moment(until),
        )  # fmt: skip
        names = sorted(stored.name for stored in await store.list_configs())
        filters = {"task": task, "state": state, "since": since, "until": until}
        next_query = ""
        if len(jobs) == PAGE:
            next_query = urlencode(
                {**{k: v for k, v in filters.items() if v}, "before": jobs[-1].id}
            )
        return console.render(
            request, "jobs.html", session, jobs=jobs, task_names=names, states=JOB_STATES,
            filters=filters, next_before=bool(next_query), next_query=next_query,
            live=before is None and not until,
        )  # fmt: skip

    @api.get("/jobs/{job_id}")
    async def job_page(
        request: Request, session: Viewer, job_id: str, done: str = ""
    ) -> HTMLResponse:
        job = await store.job(job_id[:255])
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        items = first_items(job.stats)
        return console.render(
            request, "job.html", session, job=job, history=await store.history(job.job_id),
            stats=stats_view(job.stats), items=items, flash=NOTICES.get(done, ""),
        )  # fmt: skip

    @api.post("/jobs/{job_id}/cancel")
    async def cancel(session: Changer, job_id: str) -> Response:
        job = await store.job(job_id[:255])
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        cancelled = await console.scheduler.cancel(job.job_id, "cancelled in the console")
        done = "cancelled" if cancelled else "not-cancelled"
        return console.back(f"{console.prefix}/jobs/{_quote(job.job_id)}?done={done}")

    @api.get("/events/jobs")
    async def job_changes(request: Request, session: Viewer) -> StreamingResponse:
        """Every job state change, as it is stored (``event: job``)."""

        async def events() -> AsyncIterator[str]:
            async with console.feed.subscribe() as changes:
                yield sse("ready", "{}")
                while True:
                    try:
                        change = await asyncio.wait_for(changes.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        if console.auth.session(request) is None:  # expired meanwhile
                            return
                        yield ": keepalive\n\n"
                        continue
                    if change is RELOAD:
                        yield sse("reload", "{}")
                        return
                    yield sse("job", change.to_json())

        return _stream(events())

    @api.get("/events/jobs/{job_id}")
    async def one_job(request: Request, session: Viewer, job_id: str) -> StreamingResponse:
        """A job page's feed: its state changes, its stats, its log as it is written."""
        job = await store.job(job_id[:255])
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        still = lambda: console.auth.session(request) is not None  # noqa: E731
        return _stream(_job_events(console, job.job_id, still))

    return api


def first_items(stats: dict[str, Any]) -> list[str]:
    """The items a job reported, each as indented JSON text."""
    return [
        json.dumps(item, indent=2, ensure_ascii=False, sort_keys=True)
        for item in (stats.get(FIRST_ITEMS_KEY) or [])
        if isinstance(item, dict)
    ]


def _quote(job_id: str) -> str:
    from urllib.parse import quote

    return quote(job_id, safe="")


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )


async def _job_events(
    console: Console, job_id: str, signed_in: Callable[[], bool] = lambda: True
) -> AsyncIterator[str]:
    store = console.scheduler.store
    out: asyncio.Queue[str] = asyncio.Queue(64)  # full: the producers wait (backpressure)

    async def finished() -> bool:
        job = await store.job(job_id)
        return job is None or job.final

    nudge = asyncio.Event()  # a state change: its stats (final ones, at the end) at once

    async def states() -> None:
        async with console.feed.subscribe() as changes:
            while True:
                change = await changes.get()
                if change is RELOAD:
                    await out.put(sse("reload", "{}"))
                elif change.job_id == job_id:
                    await out.put(sse("state", change.to_json()))
                    nudge.set()

    async def stats() -> None:
        seen: datetime | None = None
        while True:
            job = await store.job(job_id)
            if job is not None and job.updated_at != seen:
                seen = job.updated_at
                view = {"stats": stats_view(job.stats), "items": first_items(job.stats)}
                await out.put(sse("stats", json.dumps(view, ensure_ascii=False)))
            if job is None or job.final:  # its final stats are sent: nothing more to ask
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), STATS_SECONDS)
            nudge.clear()

    async def log() -> None:
        log_ref = None
        while log_ref is None:  # a page opened before the job started: wait for its log
            job = await store.job(job_id)
            if job is None or job.log_ref or job.final:
                log_ref = (job.log_ref if job is not None else None) or ""
            else:
                await asyncio.sleep(LOG_WAIT_SECONDS)
        async for lines in _log_lines(console, log_ref, finished):
            await out.put(sse("log", json.dumps(lines, ensure_ascii=False)))
        await out.put(sse("log-end", "{}"))

    producers = [asyncio.ensure_future(p()) for p in (states, stats, log)]
    try:
        yield sse("ready", "{}")
        while True:
            try:
                yield await asyncio.wait_for(out.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                if not signed_in():  # the session expired while the page stayed open
                    return
                yield ": keepalive\n\n"
    finally:
        for producer in producers:
            producer.cancel()
        for producer in producers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer


async def _log_lines(
    console: Console, log_ref: str | None, finished: Callable[[], Awaitable[bool]]
) -> AsyncIterator[list[str]]:
    """The job's log, local (a file it writes) or on a Scrapyd node (fetched again every
    few seconds, the new lines sent)."""
    if not log_ref:
        return
    if not log_ref.startswith(("http://", "https://")):
        async for lines in tail_file(Path(log_ref), finished):
            yield lines
        return
    remote: Any = console.scheduler.remote
    sent = 0
    while remote is not None:
        text = await remote.log(log_ref)
        lines = (text or "").splitlines()
        if len(lines) < sent:
            sent = 0
        if lines[sent:]:
            yield lines[sent:]
            sent = len(lines)
        if await finished():
            return
        await asyncio.sleep(3.0)
