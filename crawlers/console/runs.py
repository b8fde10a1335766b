"""Seed 000 in the console: runs with their progress, and the hydra's regions.

The controller keeps everything in Redis (``HYDRA_REDIS_URL``), so these pages
read it there with the controller's own readers (:class:`RunStore`,
:class:`RegionBook`, :class:`RegionTimeline`): what they show is what the
controller's API answers. The Redis client is made on the first page view and
closed with the app; without ``HYDRA_REDIS_URL`` the pages say what is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import redis.asyncio
from fastapi import APIRouter, FastAPI, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from crawlers.console.auth import Session, Viewer
from crawlers.console.svg import Node, line_chart, region_graph
from crawlers.services.controller.regions import RegionBook
from crawlers.services.controller.runs import RegionTimeline, RunStore, worker_text

if TYPE_CHECKING:
    from crawlers.config import HydraConfig
    from crawlers.console.app import Console

RUNS_SHOWN = 50
TIMELINE_SHOWN = 200
#: run ids as the controller makes them (``run-20260101-120000-ab12cd34``), with room to spare
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
#: the progress chart's colours: done is green, failed red, still to do amber
COLOURS = {"succeeded": "#1d7a3a", "failed": "#b3261e", "pending": "#9a6700"}
#: a running run's page reloads itself this often (a meta refresh: no script needed)
REFRESH_SECONDS = 5


class Records:
    """The controller's records in Redis, through a client made on first use (never at
    construction: the console starts without touching the network)."""

    def __init__(self, config: HydraConfig) -> None:
        self.config = config
        self._client: redis.asyncio.Redis | None = None

    @property
    def configured(self) -> bool:
        return bool(self.config.redis_url)

    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(
                self.config.redis_url, decode_responses=True, socket_timeout=5.0
            )
        return self._client

    def runs(self) -> RunStore:
        return RunStore(self.client())

    def book(self) -> RegionBook:
        return RegionBook(self.client(), self.config.regions)

    def timeline(self) -> RegionTimeline:
        return RegionTimeline(self.client())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def router(console: Console) -> APIRouter:
    records = Records(console.config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await records.close()

    api = APIRouter(lifespan=lifespan)

    def unavailable(
        request: Request, session: Session, title: str, exc: Exception | None
    ) -> HTMLResponse:
        """The page when there is no Redis to read (200: a console without the controller's
        Redis is a setup, not an error) or it cannot be reached (503)."""
        problem = ""
        if exc is not None:
            problem = f"Redis at {console.config.redis_url_redacted} cannot be read: {exc}"
        return console.render(
            request, "runs.html", session, status=503 if exc else 200, title=title,
            configured=records.configured, problem=problem, runs=[],
        )  # fmt: skip

    @api.get("/runs")
    async def runs_page(request: Request, session: Viewer) -> HTMLResponse:
        if not records.configured:
            return unavailable(request, session, "Runs", None)
        try:
            runs = await records.runs().recent(RUNS_SHOWN)
        except RedisError as exc:
            return unavailable(request, session, "Runs", exc)
        return console.render(
            request, "runs.html", session, title="Runs", configured=True, problem="",
            runs=[{**run, "done": _done(run)} for run in runs],
        )  # fmt: skip

    @api.get("/runs/{run_id}")
    async def run_page(
        request: Request,
        session: Viewer,
        run_id: Annotated[str, Path(max_length=128, pattern=RUN_ID)],
    ) -> HTMLResponse:
        if not records.configured:
            return unavailable(request, session, "Run", None)
        try:
            store = records.runs()
            run = await store.get(run_id)
            samples = await store.progress(run_id) if run is not None else []
        except RedisError as exc:
            return unavailable(request, session, "Run", exc)
        if run is None:
            raise HTTPException(status_code=404, detail="no such run")
        chart = line_chart(
            {name: [(s["t"], s[name]) for s in samples] for name in COLOURS},
            title=f"Run {run_id}: IDs over time", colours=COLOURS,
            empty="No progress recorded for this run.",
        )  # fmt: skip
        regions = sorted(run["regions"].items())
        return console.render(
            request, "run.html", session, run=run, done=_done(run), chart=chart,
            samples=len(samples), regions=regions,
            refresh=REFRESH_SECONDS if run["status"] == "running" else 0,
        )  # fmt: skip

    @api.get("/regions")
    async def regions_page(request: Request, session: Viewer) -> HTMLResponse:
        if not records.configured:
            return unavailable(request, session, "Regions", None)
        book = records.book()
        try:
            regions = await book.view()
            timeline = await records.timeline().recent(TIMELINE_SHOWN)
        except RedisError as exc:
            return unavailable(request, session, "Regions", exc)
        for region in regions:
            region["worker_text"] = worker_text(region["worker"])
            region["stopped"] = [
                {"worker": worker_text(w), "at": w.get("stopped_at")}
                for w in reversed(region["stopped_workers"])
            ]
        for event in timeline:
            event["until"] = _number(event["until"])
        graph = region_graph([Node(r["name"], r["state"], tuple(r["neighbours"])) for r in regions])
        return console.render(
            request, "regions.html", session, regions=regions, graph=graph,
            timeline=timeline, implicit=book.implicit,
        )  # fmt: skip

    return api


def _done(run: dict[str, Any]) -> float:
    """The share of a run's IDs that are no longer pending, in percent."""
    return 100.0 * (run["ids"] - run["pending"]) / run["ids"] if run["ids"] else 100.0


def _number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
