"""``/metrics`` of the long-running services (controller, scheduler), mounted on their apps.

Each service gets its own registry (process metrics and ``hydra_service_info``)
plus gauges refreshed *when scraped*, from the service's own state: the
controller's regions (one read of its region book), the scheduler's jobs (two
grouped queries on indexed columns of the state database, in a thread). A
refresh that fails or takes more than ``REFRESH_TIMEOUT`` seconds leaves the
last values and the scrape still answers. ``/metrics`` needs no API key: it
carries counts and names, never a task's arguments or secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Info, make_asgi_app
from prometheus_client.process_collector import ProcessCollector

logger = logging.getLogger(__name__)

REFRESH_TIMEOUT = 5.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServiceMetrics:
    """A service's registry and the ASGI app that serves it."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        Info("hydra_service", "This service.", registry=self.registry).info({"service": service})
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        self._refreshers.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshers:
            try:
                await asyncio.wait_for(refresh(), REFRESH_TIMEOUT)
            except Exception as exc:  # the scrape answers with the last values
                logger.warning("Refreshing metrics failed (%s): %s", refresh, exc)

    def app(self) -> ASGIApp:
        inner: ASGIApp = make_asgi_app(self.registry)

        async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("type") == "http":
                await self.refresh()
            await inner(scope, receive, send)

        return metrics


class RegionsSource(Protocol):
    async def regions_view(self) -> list[dict[str, Any]]: ...


def controller_metrics(controller: RegionsSource) -> ASGIApp:
    """The controller's ``/metrics``: process metrics and its regions' states."""
    metrics = ServiceMetrics("controller")
    active = Gauge(
        "hydra_region_active",
        "1 for a region in state active (it has a worker), else 0.",
        ["region"],
        registry=metrics.registry,
    )
    quarantined = Gauge(
        "hydra_region_quarantined",
        "1 for a quarantined region (its worker stopped until the cool-down ends), else 0.",
        ["region"],
        registry=metrics.registry,
    )

    async def regions() -> None:
        for region in await controller.regions_view():
            name = str(region.get("name"))
            state = region.get("state")
            active.labels(name).set(1 if state == "active" else 0)
            quarantined.labels(name).set(1 if state == "quarantined" else 0)

    metrics.on_scrape(regions)
    return metrics.app()


def scheduler_metrics(scheduler: Any) -> ASGIApp:
    """The scheduler's ``/metrics``: process metrics and its jobs by task and state."""
    from sqlalchemy import func, select

    from crawlers.db.models import Base

    jobs_table = Base.metadata.tables["scheduled_jobs"]
    metrics = ServiceMetrics("scheduler")
    jobs = Gauge(
        "hydra_jobs",
        "Jobs in the state database, by task and state.",
        ["task", "state"],
        registry=metrics.registry,
    )
    last_success = Gauge(
        "hydra_job_last_success_timestamp_seconds",
        "End time of the task's last succeeded job (Unix seconds).",
        ["task"],
        registry=metrics.registry,
    )
    counts = select(jobs_table.c.task_name, jobs_table.c.state, func.count()).group_by(
        jobs_table.c.task_name, jobs_table.c.state
    )
    successes = (
        select(jobs_table.c.task_name, func.max(jobs_table.c.finished_at))
        .where(jobs_table.c.state == "succeeded")
        .group_by(jobs_table.c.task_name)
    )

    def query() -> tuple[list[Any], list[Any]]:
        with scheduler.db.transaction(write=False) as connection:
            return connection.execute(counts).all(), connection.execute(successes).all()

    async def refresh() -> None:
        by_state, last = await asyncio.to_thread(query)
        jobs.clear()  # a task deleted, a state left: its series goes
        for task, state, count in by_state:
            jobs.labels(task, state).set(count)
        for task, finished in last:
            if finished is not None:
                if finished.tzinfo is None:
                    finished = finished.replace(tzinfo=UTC)
                last_success.labels(task).set(finished.timestamp())

    metrics.on_scrape(refresh)
    return metrics.app()
