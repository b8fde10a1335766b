"""The controller's HTTP API (FastAPI; OpenAPI at ``/docs``): start runs, watch them.

Every endpoint but the docs needs ``X-API-Key`` (one of ``HYDRA_API_KEYS``,
compared in constant time). Input is untrusted: bodies are read up to
``HYDRA_MAX_REQUEST_BYTES`` (413 beyond), IDs are trimmed, de-duplicated and
checked (422 naming the offending item), and nothing is enqueued unless all of
it is valid. Bad input never yields a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from crawlers.config import HydraConfig
from crawlers.monitoring.services import controller_metrics
from crawlers.services.controller.service import Controller

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPLIT = re.compile(r"[,\r\n]+")
_RUN_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "ids": {
                        "oneOf": [
                            {"type": "array", "items": {"type": "string"}},
                            {"type": "string", "description": "comma-separated"},
                        ]
                    }
                },
            }
        },
        "text/plain": {"schema": {"type": "string", "description": "IDs, comma-separated"}},
    },
}


class BadInput(HTTPException):
    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(status_code=status, detail=detail)


def clean_ids(raw: list[Any], config: HydraConfig) -> list[str]:
    """Trimmed, de-duplicated (first occurrence kept), every one checked."""
    seen: dict[str, None] = {}
    for position, item in enumerate(raw):
        if not isinstance(item, str):
            raise BadInput(f"ids[{position}] is not a string")
        value = item.strip()
        shown = json.dumps(value[:80])
        if not value:
            raise BadInput(f"ids[{position}] is empty")
        if len(value) > config.max_id_length:
            raise BadInput(
                f"ids[{position}] {shown}... is longer than {config.max_id_length} characters"
            )
        if value in (".", "..") or _CONTROL.search(value):
            raise BadInput(f"ids[{position}] {shown} is '.', '..' or holds control characters")
        seen[value] = None
        if len(seen) > config.max_run_ids:
            raise BadInput(f"more than HYDRA_MAX_RUN_IDS={config.max_run_ids} IDs")
    return list(seen)


def parse_body(body: bytes, content_type: str) -> list[Any] | None:
    """The ``ids`` of a body; ``None`` when it asks for every ID of the warehouse."""
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8") from None
    if content_type.split(";")[0].strip().lower() == "text/plain":
        return _SPLIT.split(text.strip())
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("the body is neither JSON nor text/plain") from None
    if not isinstance(data, dict):
        raise BadInput('the JSON body must be an object like {"ids": ["1", "2"]}')
    unknown = sorted(set(data) - {"ids"})
    if unknown:
        raise BadInput(f"unknown fields: {', '.join(map(str, unknown))[:200]}")
    ids = data.get("ids")
    if ids is None:
        return None
    if isinstance(ids, str):
        return _SPLIT.split(ids.strip()) if ids.strip() else None
    if not isinstance(ids, list):
        raise BadInput("ids must be a list of strings or a comma-separated string")
    return ids


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadInput(f"the body is larger than {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(f"the body is larger than {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)


async def authorised(
    request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)]
) -> None:
    given = (key or "").encode()
    keys: list[bytes] = request.app.state.api_keys
    # compare with every key, so the time taken says nothing about which matched
    if not any([hmac.compare_digest(given, known) for known in keys]) or not given:
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")


def create_app(config: HydraConfig, controller: Controller) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()

    app = FastAPI(title="Hydra controller", version="1", lifespan=lifespan)
    app.state.api_keys = [key.encode() for key in config.api_keys]
    api = APIRouter(dependencies=[Depends(authorised)])

    @api.post("/runs", status_code=202, openapi_extra={"requestBody": _RUN_BODY})
    async def start_run(request: Request) -> dict[str, Any]:
        """Start a run: the given IDs, or every ID of `HYDRA_ID_SOURCE` when none."""
        body = await read_capped(request, config.max_request_bytes)
        raw = parse_body(body, request.headers.get("content-type", "application/json"))
        if raw is None:
            raw = await _warehouse_ids(config)
        ids = clean_ids(raw, config)
        if not ids:
            raise BadInput("no IDs given")
        return await controller.create_run(ids)

    @api.get("/runs")
    async def list_runs(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        """The most recent runs, newest first."""
        return await controller.runs.recent(limit)

    @api.get("/runs/{run_id}")
    async def get_run(run_id: Annotated[str, Path(max_length=255)]) -> dict[str, Any]:
        """A run's status and counts (from per-ID state: an ID never counts twice)."""
        run = await controller.runs.get(run_id)
        if run is None:
            raise HTTPException(status_code=404, detail="no such run")
        return run

    @api.get("/regions")
    async def list_regions() -> list[dict[str, Any]]:
        """Each region: state, quarantine left, its worker, batches done and stopped."""
        return await controller.regions_view()

    app.include_router(api)
    app.mount("/metrics", controller_metrics(controller))  # no key: counts only (docs/metrics.md)
    return app


async def _warehouse_ids(config: HydraConfig) -> list[Any]:
    if not config.id_source:
        raise BadInput("no ids given and no HYDRA_ID_SOURCE to take them from")
    from crawlers.warehouse import read_ids

    def read_all() -> list[str]:
        ids: list[str] = []
        for page in read_ids(config.id_source, endpoint=config.bigquery_endpoint or None):
            ids.extend(page)
            if len(ids) > config.max_run_ids:
                raise BadInput(f"{config.id_source}: more than HYDRA_MAX_RUN_IDS IDs")
        return ids

    return await asyncio.to_thread(read_all)
