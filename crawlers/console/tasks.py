"""Tasks: list, create, edit (problems next to their field), versions with a diff,
trigger now, pause and resume, secrets set and unset (never shown)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from crawlers.console.auth import Changer, Session, Viewer
from crawlers.console.task_forms import (
    CHOICES,
    MAX_FIELD,
    SECTIONS_WITH_SECRETS,
    blank_form,
    form_of,
    secret_paths,
    task_from_form,
    version_diff,
    with_secret,
)
from crawlers.models.task_config import TaskConfig
from crawlers.models.validation import validation_error_text

if TYPE_CHECKING:
    from crawlers.console.app import Console

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SECRET_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
NOTICES = {
    "saved": "Saved.",
    "triggered": "Triggered: the job is in the list below.",
    "paused": "Paused: its trigger does not fire until it is resumed.",
    "resumed": "Resumed.",
    "secret-set": "Secret set.",
    "secret-unset": "Secret removed.",
}


def router(console: Console) -> APIRouter:
    api = APIRouter()
    scheduler = console.scheduler
    who = "console"

    async def existing(name: str) -> TaskConfig:
        task = await scheduler.task(name) if NAME.match(name) else None
        if task is None:
            raise HTTPException(status_code=404, detail="no such task")
        return task

    async def read_form(request: Request) -> dict[str, str]:
        form = await request.form()
        given = {key: value[:MAX_FIELD] for key, value in form.items() if isinstance(value, str)}
        return {**blank_form(), "paused": "", **given}

    def form_page(
        request: Request, session: Session, form: dict[str, str], errors: dict[str, str],
        *, creating: bool, status: int = 200,
    ) -> HTMLResponse:  # fmt: skip
        return console.render(
            request, "task_form.html", session, form=form, errors=errors, creating=creating,
            choices=CHOICES, status=status,
        )  # fmt: skip

    @api.get("/tasks")
    async def tasks_page(request: Request, session: Viewer) -> HTMLResponse:
        stored = await scheduler.store.list_configs()
        return console.render(request, "tasks.html", session, tasks=stored)

    @api.get("/tasks/new")
    async def new_task(request: Request, session: Viewer) -> HTMLResponse:
        return form_page(request, session, blank_form(), {}, creating=True)

    @api.post("/tasks/new")
    async def create_task(request: Request, session: Changer) -> Response:
        form = await read_form(request)
        name = form.get("name", "").strip()
        errors: dict[str, str] = {}
        if not NAME.match(name):
            errors["name"] = "lower-case letters, digits, - and _ (at most 64)"
        elif await scheduler.store.get_config(name) is not None:
            errors["name"] = "a task of this name exists"
        task, problems = task_from_form(form, name, None)
        errors = {**problems, **errors}
        if errors or task is None:
            return form_page(request, session, form, errors, creating=True, status=422)
        return await save(request, session, task, form, creating=True)

    async def save(
        request: Request, session: Session, task: TaskConfig, form: dict[str, str],
        *, creating: bool,
    ) -> Response:  # fmt: skip
        changed_by = f"{who}:{session.key_id}"
        try:
            await scheduler.put_task(task, changed_by)
        except ValueError as exc:  # a plain secret without HYDRA_SCHEDULER_SECRET_KEY
            errors = {"args": str(exc)}
            return form_page(request, session, form, errors, creating=creating, status=422)
        paused = form.get("paused") == "on"  # a flag of its own, not part of the config
        stored = await scheduler.store.get_config(task.name)
        if stored is not None and stored.paused != paused:
            await scheduler.set_paused(task.name, paused, changed_by)
        return console.back(f"{console.prefix}/tasks/{task.name}?done=saved")

    @api.get("/tasks/{name}")
    async def task_page(request: Request, session: Viewer, name: str, done: str = "") -> Response:
        task = await existing(name)
        stored = await scheduler.store.get_config(name)
        history = await scheduler.store.config_history(name)
        jobs = await scheduler.store.jobs(name, None, 20, None)
        return console.render(
            request, "task.html", session, task=task, public=task.public(), stored=stored,
            history=list(reversed(history)), jobs=jobs, secrets=secret_paths(task),
            flash=NOTICES.get(done, ""), sections=SECTIONS_WITH_SECRETS,
        )  # fmt: skip

    @api.get("/tasks/{name}/edit")
    async def edit_page(request: Request, session: Viewer, name: str) -> HTMLResponse:
        return form_page(request, session, form_of(await existing(name)), {}, creating=False)

    @api.post("/tasks/{name}/edit")
    async def edit(request: Request, session: Changer, name: str) -> Response:
        current = await existing(name)
        form = await read_form(request)
        form["name"] = name
        task, errors = task_from_form(form, name, current)
        if errors or task is None:
            return form_page(request, session, form, errors, creating=False, status=422)
        return await save(request, session, task, form, creating=False)

    @api.get("/tasks/{name}/versions/{version}")
    async def version_page(
        request: Request, session: Viewer, name: str, version: int
    ) -> HTMLResponse:
        history = await scheduler.store.config_history(name) if NAME.match(name) else []
        by_version = {change.version: change for change in history}
        change = by_version.get(version)
        if change is None:
            raise HTTPException(status_code=404, detail="no such version")
        before = max((v for v in by_version if v < version), default=None)
        old: dict[str, Any] | None = None
        if before is not None:
            old = {**by_version[before].config, "paused": by_version[before].paused}
        diff = version_diff(old, {**change.config, "paused": change.paused})
        return console.render(
            request, "task_version.html", session, name=name, change=change, before=before,
            diff=diff,
        )  # fmt: skip

    @api.post("/tasks/{name}/trigger")
    async def trigger(session: Changer, name: str) -> Response:
        await existing(name)
        await scheduler.trigger(name)
        return console.back(f"{console.prefix}/tasks/{name}?done=triggered")

    @api.post("/tasks/{name}/pause")
    async def pause(session: Changer, name: str) -> Response:
        await existing(name)
        await scheduler.set_paused(name, True, f"{who}:{session.key_id}")
        return console.back(f"{console.prefix}/tasks/{name}?done=paused")

    @api.post("/tasks/{name}/resume")
    async def resume(session: Changer, name: str) -> Response:
        await existing(name)
        await scheduler.set_paused(name, False, f"{who}:{session.key_id}")
        return console.back(f"{console.prefix}/tasks/{name}?done=resumed")

    @api.post("/tasks/{name}/secrets")
    async def set_secret(
        request: Request,
        session: Changer,
        name: str,
        section: Annotated[str, Form(max_length=16)],
        key: Annotated[str, Form(max_length=100)],
        value: Annotated[str, Form(max_length=4096)] = "",
        unset: Annotated[str, Form(max_length=8)] = "",
    ) -> Response:
        task = await existing(name)
        if section not in SECTIONS_WITH_SECRETS or not SECRET_KEY.match(key):
            raise HTTPException(status_code=422, detail="a secret lives in args or settings")
        if not unset and not value:
            raise HTTPException(status_code=422, detail="give the secret's value")
        try:
            changed = with_secret(task, section, key, None if unset else value)
            await scheduler.put_task(changed, f"{who}:{session.key_id}")
        except ValidationError as exc:  # the text without input values: never the secret
            raise HTTPException(status_code=422, detail=validation_error_text(exc)) from None
        except ValueError as exc:  # no HYDRA_SCHEDULER_SECRET_KEY: names no value
            raise HTTPException(status_code=422, detail=str(exc)) from None
        done = "secret-unset" if unset else "secret-set"
        return console.back(f"{console.prefix}/tasks/{name}?done={done}")

    return api
