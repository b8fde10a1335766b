"""The operator console: HTML pages under ``/ui`` of the scheduler's own app (same bind).

Pages are rendered on the server with Jinja2 (autoescaped: a ``<script>`` in a
task name, a log line or an item is text), one small script makes them live
(Server-Sent Events), and a strict Content-Security-Policy forbids inline
scripts, so markup that slipped through escaping would still not run. Each page
family is a module with a ``router(console)``; :data:`PAGES` lists them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from crawlers.config import HydraConfig
from crawlers.console.auth import (
    COOKIE,
    ConsoleAuth,
    Session,
    SignInLimiter,
    SignInRequired,
    Viewer,
    served_over_https,
)
from crawlers.console.live import JobFeed
from crawlers.services.scheduler.service import Scheduler

PREFIX = "/ui"
#: the largest sign-in form body (a key of up to 1 KiB, urlencoded, and the CSRF-free rest)
MAX_SIGN_IN_BODY = 8192
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # "no-referrer" would make Chromium send "Origin: null" with every form POST
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Console:
    """What every page needs: the scheduler, sign-in, the live feed and the templates."""

    def __init__(self, config: HydraConfig, scheduler: Scheduler) -> None:
        self.prefix = PREFIX
        self.config = config
        self.scheduler = scheduler
        self.auth = ConsoleAuth(config)
        self.feed = JobFeed(scheduler.db)
        scheduler.store.listeners.append(self.feed.poke)
        self.templates = Environment(
            loader=PackageLoader("crawlers.console"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
        )
        self.templates.filters["when"] = _when
        # messages a worker wrote (failures, heal reasons) may quote a URL with its token
        self.templates.filters["redact"] = config.redactor.text

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        *,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            request=request, session=session, prefix=PREFIX, **context
        )
        return HTMLResponse(page, status_code=status)

    @staticmethod
    def back(url: str) -> RedirectResponse:
        """After a change, the page to show (303: the browser GETs it)."""
        return RedirectResponse(url, status_code=303)


def _when(value: datetime | str | float | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return value.replace("T", " ")[:19]
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _small_body(request: Request) -> None:
    """The sign-in form needs no session: its body is capped before it is parsed."""
    if int(request.headers.get("content-length") or MAX_SIGN_IN_BODY + 1) > MAX_SIGN_IN_BODY:
        raise HTTPException(status_code=413, detail="a sign-in is a key, not a file")


def _sign_in_routes(console: Console) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    limiter = SignInLimiter()

    @router.get("/login")
    async def login_page(request: Request, next: str = "") -> HTMLResponse:
        return console.render(request, "login.html", None, next=_local(next), error="")

    @router.post("/login", dependencies=[Depends(_small_body)])
    async def login(
        request: Request, api_key: Annotated[str, Form(max_length=1024)] = "", next: str = ""
    ) -> Response:
        client = request.client.host if request.client else "-"
        if limiter.blocked(client):
            return console.render(
                request, "login.html", None, status=429, next=_local(next),
                error="Too many failed sign-ins from here: wait a minute.",
            )  # fmt: skip
        session = console.auth.sign_in(api_key)
        if session is None:
            limiter.failed(client)
            return console.render(
                request, "login.html", None, status=401, next=_local(next),
                error="That key is not one of this scheduler's keys.",
            )  # fmt: skip
        response = console.back(_local(next) or f"{PREFIX}/jobs")
        response.set_cookie(
            COOKIE, console.auth.cookie(session), max_age=console.auth.max_age,
            httponly=True, samesite="strict", secure=served_over_https(request), path="/",
        )  # fmt: skip
        return response

    @router.post("/logout")
    async def logout(session: Viewer) -> Response:
        response = console.back(f"{PREFIX}/login")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router


def _local(url: str) -> str:
    """Only a path of this console as the place to return to (never another site)."""
    path, _, query = url.partition("?")
    normal = posixpath.normpath(path) if path else ""
    if not normal.startswith(PREFIX + "/") or "\\" in url or any(ord(c) < 32 for c in url):
        return ""
    return normal + (f"?{query}" if query else "")


def page_modules() -> list[ModuleType]:
    """The console's page families, in menu order."""
    from crawlers.console import channels, charts, deadletters, jobs, runs, tasks

    return [jobs, tasks, runs, channels, deadletters, charts]


def mount_console(app: FastAPI, config: HydraConfig, scheduler: Scheduler) -> Console:
    console = Console(config, scheduler)
    app.state.console = console
    app.include_router(_sign_in_routes(console))
    for module in page_modules():
        app.include_router(module.router(console), prefix=PREFIX, include_in_schema=False)
    app.mount(
        f"{PREFIX}/static", StaticFiles(packages=[("crawlers.console", "static")]), name="static"
    )

    async def sign_in_first(request: Request, exc: Exception) -> Response:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)

    app.add_exception_handler(SignInRequired, sign_in_first)

    async def error_page(request: Request, exc: Exception) -> Response:
        """A console page's error as a page (the API keeps FastAPI's JSON answers)."""
        assert isinstance(exc, StarletteHTTPException)
        if not request.url.path.startswith(PREFIX + "/"):
            return await http_exception_handler(request, exc)
        session = console.auth.session(request)
        return console.render(
            request, "error.html", session, status=exc.status_code, status_code=exc.status_code,
            detail=str(exc.detail),
        )  # fmt: skip

    app.add_exception_handler(StarletteHTTPException, error_page)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        """A console form or query FastAPI refused: a page naming the fields, never echoing
        what was sent (it may be a secret)."""
        assert isinstance(exc, RequestValidationError)
        if not request.url.path.startswith(PREFIX + "/"):
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'request'}: {error['msg']}"
            for error in exc.errors()
        )
        session = console.auth.session(request)
        return console.render(
            request, "error.html", session, status=422, status_code=422, detail=problems
        )

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.middleware("http")
    async def secure_pages(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path == "/" or request.url.path.startswith(PREFIX):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/jobs", status_code=303)

    return console
