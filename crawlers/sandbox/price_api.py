"""The sandbox price API: a FastAPI app with reproducible refusals and failures.

It is a benchmark target, so ``/price`` is a plain Starlette route answering
pre-serialized JSON bytes: FastAPI's per-request parameter handling and response
validation halved the throughput. There is no middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response

_JSON = "application/json"
_RATE_LIMITED = json.dumps({"error": "rate limited"}).encode()
_UNAVAILABLE = json.dumps({"error": "unavailable"}).encode()
_RETRY_AFTER = {"Retry-After": "1"}
_BLOCKED = json.dumps({"error": "your region is blocked"}).encode()


@dataclass
class SandboxStats:
    """Per-process counters, so tests and benchmarks can check what a crawl sent."""

    requests: int = 0
    refused: int = 0
    failed: int = 0
    per_id: Counter[str] = field(default_factory=Counter)
    per_region: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "failed": self.failed,
            "per_id": dict(self.per_id),
            "per_region": dict(self.per_region),
        }

    def reset(self) -> None:
        self.requests = self.refused = self.failed = 0
        self.per_id.clear()
        self.per_region.clear()


def price_for(price_id: str) -> float:
    """Derive the price from the id alone, so every run and process agrees on it."""
    digest = hashlib.sha256(price_id.encode()).digest()
    cents = 100 + int.from_bytes(digest[:8], "big") % 49_901  # 1.00 .. 500.00
    return cents / 100


def create_app(
    *,
    refuse_rate: float = 0.0,
    seed: int = 0,
    delay_seconds: float = 0.0,
    fail_ids: frozenset[str] = frozenset(),
    block_regions: dict[str, int] | None = None,
) -> FastAPI:
    """Build the app; one seeded RNG per app keeps the sequence of 429s reproducible."""
    if not 0.0 <= refuse_rate <= 1.0:
        raise ValueError(f"refuse_rate must be within [0, 1], got {refuse_rate}")
    if delay_seconds < 0:
        raise ValueError(f"delay_seconds must be >= 0, got {delay_seconds}")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    rng = random.Random(seed)
    stats = SandboxStats()
    app.state.stats = stats
    #: region -> requests it may still make before it is blocked (403, like an IP ban)
    allowance = dict(block_regions or {})

    async def price(request: Request) -> Response:
        price_id: str = request.path_params["price_id"]
        stats.requests += 1
        if allowance:
            region = request.headers.get("x-hydra-region", "")
            stats.per_region[region] += 1
            if region in allowance:
                if allowance[region] <= 0:
                    stats.refused += 1
                    return Response(_BLOCKED, status_code=403, media_type=_JSON)
                allowance[region] -= 1
        stats.per_id[price_id] += 1
        if delay_seconds > 0:
            await asyncio.sleep(delay_seconds)
        if price_id in fail_ids:
            stats.failed += 1
            return Response(_UNAVAILABLE, status_code=503, media_type=_JSON)
        # Draw only when refusing is possible, so a zero rate costs nothing.
        if refuse_rate > 0 and rng.random() < refuse_rate:
            stats.refused += 1
            return Response(_RATE_LIMITED, status_code=429, media_type=_JSON, headers=_RETRY_AFTER)
        body = {
            "id": price_id,
            "price": price_for(price_id),
            "currency": "USD",
            "updated_at": datetime.now(UTC).isoformat(),
        }
        return Response(json.dumps(body).encode(), media_type=_JSON)

    app.add_route("/price/{price_id}", price, methods=["POST"], include_in_schema=False)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/stats")
    async def get_stats() -> dict[str, object]:
        return stats.as_dict()

    @app.post("/stats/reset")
    async def reset_stats() -> dict[str, bool]:
        stats.reset()
        return {"ok": True}

    return app
