"""The scheduler's HTTP API (FastAPI; OpenAPI at ``/docs``).

``X-API-Key``: one of ``HYDRA_API_KEYS`` (operator: everything) or
``HYDRA_READONLY_API_KEYS`` (GET only). Secrets of task configs are write-only:
every answer shows them as ``***`` or as the environment reference they are.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.responses import PlainTextResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ValidationError

from crawlers.config import HydraConfig
from crawlers.console.app import mount_console
from crawlers.models.task_config import TaskConfig
from crawlers.models.validation import validation_error_text
from crawlers.monitoring.services import scheduler_metrics
from crawlers.services.scheduler.service import Scheduler

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
NameParam = Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
JobParam = Annotated[str, Path(max_length=255)]


class Problem(BaseModel):
    """An error answer: what is wrong (a list of problems when FastAPI validated the request)."""

    detail: str | list[dict[str, Any]]


#: the errors every operation may answer (documented, so that clients and fuzzers know them)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong X-API-Key"},
    403: {"model": Problem, "description": "A read-only key, and not a GET"},
    422: {"model": Problem, "description": "Invalid request"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Not found"}}
#: a body that is not JSON in UTF-8 (FastAPI's answer)
BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body cannot be parsed"}
}
#: the largest integer the state database stores (SQLite and PostgreSQL BIGINT)
MAX_ID = 2**63 - 1


def _json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``responses`` documented as JSON, for a route whose own answer is not (FastAPI would
    document them in the route's media type)."""
    schema = Problem.model_json_schema()
    return {
        code: {
            "description": response["description"],
            "content": {"application/json": {"schema": schema}},
        }
        for code, response in responses.items()
    }


def _matches(given: bytes, keys: list[bytes]) -> bool:
    return bool(given) and any([hmac.compare_digest(given, key) for key in keys])


async def reader(request: Request, key: Annotated[str | None, Security(API_KEY_HEADER)]) -> str:
    given = (key or "").encode()
    state = request.app.state
    if _matches(given, state.operator_keys):
        return "operator"
    if _matches(given, state.reader_keys):
        if request.method != "GET":
            raise HTTPException(status_code=403, detail="a read-only key may only read")
        return "reader"
    raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")


def create_app(config: HydraConfig, scheduler: Scheduler) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await app.state.console.feed.close()
            await scheduler.stop()

    app = FastAPI(title="Hydra scheduler", version="1", lifespan=lifespan)
    app.state.operator_keys = [key.encode() for key in config.api_keys]
    app.state.reader_keys = [key.encode() for key in config.readonly_api_keys]
    api = APIRouter(dependencies=[Depends(reader)], responses=ERRORS)

    async def existing(name: str) -> TaskConfig:
        task = await scheduler.task(name)
        if task is None:
            raise HTTPException(status_code=404, detail="no such task")
        return task

    @api.get("/tasks")
    async def list_tasks() -> list[dict[str, Any]]:
        """Every task config (secrets masked)."""
        names = [stored.name for stored in await scheduler.store.list_configs()]
        return [(await existing(name)).public() for name in names]

    @api.put("/tasks/{name}", responses=BAD_BODY)
    async def put_task(name: NameParam, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Create or replace a task config (validated; its previous versions are kept)."""
        try:
            task = TaskConfig.model_validate({**body, "name": name})
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=validation_error_text(exc)) from None
        try:
            version = await scheduler.put_task(task, "api")
        except ValueError as exc:  # a plain secret without HYDRA_SCHEDULER_SECRET_KEY
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"name": name, "version": version}

    @api.get("/tasks/{name}", responses=NOT_FOUND)
    async def get_task(name: NameParam) -> dict[str, Any]:
        return (await existing(name)).public()

    @api.delete("/tasks/{name}", responses=NOT_FOUND)
    async def delete_task(name: NameParam) -> dict[str, Any]:
        if not await scheduler.delete_task(name, "api"):  # the engine's configs too
            raise HTTPException(status_code=404, detail="no such task")
        return {"name": name, "deleted": True}

    @api.get("/tasks/{name}/history")
    async def task_history(name: NameParam) -> list[dict[str, Any]]:
        """Every version of the config: who changed it, when, how."""
        changes = await scheduler.store.config_history(name)
        return [
            {"version": c.version, "change": c.change, "changed_by": c.changed_by,
             "changed_at": c.changed_at.isoformat()}
            for c in changes
        ]  # fmt: skip

    @api.post("/tasks/{name}/pause", responses=NOT_FOUND)
    async def pause(name: NameParam) -> dict[str, Any]:
        await existing(name)
        return {"name": name, "version": await scheduler.set_paused(name, True, "api")}

    @api.post("/tasks/{name}/resume", responses=NOT_FOUND)
    async def resume(name: NameParam) -> dict[str, Any]:
        await existing(name)
        return {"name": name, "version": await scheduler.set_paused(name, False, "api")}

    @api.post("/tasks/{name}/trigger", status_code=202, responses={**NOT_FOUND, **BAD_BODY})
    async def trigger(
        name: NameParam, body: Annotated[dict[str, Any] | None, Body()] = None
    ) -> dict[str, Any]:
        """Run the task now; ``{"args": {...}}`` overrides spider arguments for this job."""
        args = (body or {}).get("args") or {}
        if not isinstance(args, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in args.items()
        ):
            raise HTTPException(status_code=422, detail="args must map names to strings")
        job_id = await scheduler.trigger(name, {k: str(v) for k, v in args.items()})
        if job_id is None:
            raise HTTPException(status_code=404, detail="no such task")
        return {"job_id": job_id}

    @api.get("/jobs")
    async def list_jobs(
        task: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[str | None, Query(max_length=16)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first; page with ``before`` = the last ``id`` seen."""
        try:
            jobs = await scheduler.store.jobs(task, state, limit, before)  # type: ignore[arg-type]
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return [_job(job) for job in jobs]

    @api.get("/jobs/{job_id}", responses=NOT_FOUND)
    async def get_job(job_id: JobParam) -> dict[str, Any]:
        """A job, its stats and its state history."""
        job = await scheduler.store.job(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        history = await scheduler.store.history(job_id)
        return {
            **_job(job),
            "stats": job.stats,
            "history": [
                {"from": h.from_state, "to": h.to_state, "at": h.at.isoformat(), "reason": h.reason}
                for h in history
            ],
        }

    @api.get(
        "/jobs/{job_id}/log",
        response_class=PlainTextResponse,
        responses=_json_errors({**ERRORS, **NOT_FOUND}),
    )
    async def job_log(job_id: JobParam) -> str:
        """The job's log (its last 1 MiB)."""
        job = await scheduler.store.job(job_id)
        if job is None or not job.log_ref:
            raise HTTPException(status_code=404, detail="no log for this job")
        if job.log_ref.startswith(("http://", "https://")):  # a job on a Scrapyd node
            text = await scheduler.remote.log(job.log_ref) if scheduler.remote else None
            if text is None:
                raise HTTPException(status_code=404, detail="the log is not available")
            return text
        from pathlib import Path as FilePath

        path = FilePath(job.log_ref)
        try:
            with path.open("rb") as file:
                size = file.seek(0, 2)
                file.seek(max(0, size - (1 << 20)))
                return file.read().decode("utf-8", "replace")
        except OSError:
            raise HTTPException(status_code=404, detail="the log is gone") from None

    @api.get("/nodes")
    async def nodes() -> list[dict[str, Any]]:
        """The Scrapyd nodes jobs run on (``HYDRA_SCHEDULER_NODES``), their load and
        whether they answer; empty when jobs run locally."""
        if scheduler.remote is None:
            return []
        return [
            {
                "url": node.url, "slots": node.slots, "running": node.running,
                "pending": node.pending, "up": node.up, "last_error": node.last_error,
            }
            for node in scheduler.remote.nodes.states()
        ]  # fmt: skip

    @api.post("/jobs/{job_id}/cancel", responses=NOT_FOUND)
    async def cancel(job_id: JobParam) -> dict[str, Any]:
        if await scheduler.store.job(job_id) is None:
            raise HTTPException(status_code=404, detail="no such job")
        return {"job_id": job_id, "cancelled": await scheduler.cancel(job_id)}

    app.include_router(api)
    app.mount("/metrics", scheduler_metrics(scheduler))  # no key: counts only (docs/metrics.md)
    mount_console(app, config, scheduler)
    return app


def _job(job: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": job.id, "job_id": job.job_id, "task": job.task_name, "attempt": job.attempt,
        "priority": job.priority, "state": job.state, "reason": job.reason,
        "fired_at": iso(job.fired_at), "scheduled_for": iso(job.scheduled_for),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "worker": job.worker,
    }  # fmt: skip
