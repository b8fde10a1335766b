"""Charts: requests/s, items/s and errors per task kind and region over time, from Prometheus.

The workers' own counters (``hydra_requests_total``, ``hydra_items_total``, see
docs/metrics.md) are already scraped by Prometheus, which keeps their history;
the console asks it (``HYDRA_CONSOLE_PROMETHEUS_URL``, ``/api/v1/query_range``)
rather than keeping a second time series store. A Prometheus that is not
configured or does not answer leaves the page up with a note saying so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from crawlers.console.auth import Viewer
from crawlers.console.svg import line_chart
from crawlers.models.redaction import redact_url

if TYPE_CHECKING:
    from crawlers.console.app import Console

#: the time ranges offered, in seconds
RANGES = {"15m": 900, "1h": 3600, "6h": 21_600, "24h": 86_400, "7d": 604_800}
#: points per series at most (Prometheus caps a range query at 11,000)
POINTS = 240
#: series per chart at most: the largest ones
MAX_SERIES = 12
TIMEOUT = 5.0
OK_STATUS = "2..|ok"


@dataclass(frozen=True)
class ChartQuery:
    title: str
    promql: str
    unit: str


CHARTS = (
    ChartQuery("Requests per second", "sum by (kind, region) (rate(hydra_requests_total[{w}]))",
               "requests/s"),
    ChartQuery("Items per second", "sum by (kind, region) (rate(hydra_items_total[{w}]))",
               "items/s"),
    ChartQuery("Errors per second (responses not OK, download errors)",
               "sum by (kind, region) "
               f'(rate(hydra_requests_total{{status!~"{OK_STATUS}"}}[{{w}}]))', "errors/s"),
)  # fmt: skip


class PrometheusError(Exception):
    """Prometheus did not answer, or not with a result (the message names no credential)."""


async def query_range(
    client: httpx.AsyncClient, base: str, promql: str, start: float, end: float, step: float
) -> dict[str, list[tuple[float, float]]]:
    """Each series of a range query as ``{"kind / region": [(t, value)...]}``."""
    try:
        answer = await client.get(
            base.rstrip("/") + "/api/v1/query_range",
            params={"query": promql, "start": start, "end": end, "step": step},
        )
        body: Any = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PrometheusError(f"Prometheus did not answer ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise PrometheusError("Prometheus answered something that is not a query result")
    if answer.status_code != 200 or body.get("status") != "success":
        error = str(body.get("error", answer.status_code))[:200]
        raise PrometheusError(f"Prometheus refused the query: {error}")
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        for item in body["data"]["result"]:
            labels = item.get("metric", {})
            name = " / ".join(str(labels.get(key, "-")) for key in ("kind", "region"))
            points = [(float(t), float(v)) for t, v in item.get("values", [])]
            series[name] = [(t, v) for t, v in points if math.isfinite(v)]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PrometheusError("Prometheus answered a result this page cannot read") from None
    largest = sorted(series, key=lambda name: max((v for _, v in series[name]), default=0))
    return {name: series[name] for name in sorted(largest[-MAX_SERIES:])}


def router(console: Console) -> APIRouter:
    api = APIRouter()

    @api.get("/charts")
    async def charts_page(
        request: Request,
        session: Viewer,
        span: Annotated[str, Query(alias="range", max_length=8)] = "1h",
    ) -> HTMLResponse:
        base = console.config.console_prometheus_url
        seconds = RANGES.get(span, RANGES["1h"])
        charts: list[tuple[str, Markup]] = []
        problem = ""
        if base:
            end = time.time()
            step = max(1.0, seconds / POINTS)
            window = f"{max(60, int(step * 4))}s"  # rate() needs several samples per window
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                for chart in CHARTS:
                    try:
                        series = await query_range(
                            client,
                            base,
                            chart.promql.replace("{w}", window),
                            end - seconds,
                            end,
                            step,
                        )
                    except PrometheusError as exc:
                        problem = str(exc)
                        break
                    charts.append((chart.title, line_chart(
                        series, title=chart.title, empty=f"No {chart.unit} in this range.",
                    )))  # fmt: skip
        return console.render(
            request, "charts.html", session, charts=charts, problem=problem,
            prometheus=redact_url(base) if base else "", ranges=list(RANGES), span=span,
        )  # fmt: skip

    return api
