"""The sandbox shop: local sites for capturing and generating fetchers (issue 10).

One app serves two sites over the same deterministic catalogue:

- ``/shop/``: a JS page whose products come from a bearer-token, paginated JSON
  API (``/api/session`` hands out the token), amid noise a HAR analysis must
  ignore (an analytics beacon, a stylesheet, a config object without arrays).
  ``POST /__admin/api_version`` switches it to a "v2" API (renamed fields, a moved
  endpoint, cursor pagination; v1 answers 410) to simulate a site change, and
  ``login_required`` puts it behind a login form and a session cookie.
- ``/catalogue?page=N``: the same products server-rendered, with no API at all,
  for DOM fetchers.

``fail_next`` makes the next K ``/api/`` requests answer 503 (a transient
outage); the page's JS retries those, as real sites do. The data endpoints are
plain Starlette routes with cached JSON bytes, since the shop is also a
benchmark target; ``/__stats`` counts requests per path and per status.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import html
import json
import math
import os
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, quote

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Product", "ShopStats", "catalogue", "create_shop_app", "main"]

DEFAULT_PRODUCTS = 57
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
SESSION_COOKIE = "shop_session"
#: the child process reads the login password from here, not from its command line
PASSWORD_ENV = "SHOP_PASSWORD"

_JSON = "application/json"
_ADJECTIVES = ("Amber", "Brisk", "Cobalt", "Dusky", "Ember", "Frosted", "Gilded", "Hazel")
_NOUNS = ("Kettle", "Lantern", "Mug", "Notebook", "Pillow", "Quilt", "Radio", "Satchel")
_CSS = b"body{font-family:sans-serif;margin:2em}li.product{margin:.3em 0}.price{color:#060}\n"
_NAV = (
    '<nav><ul id="menu"><li><a href="/shop/">Shop</a></li>'
    '<li><a href="/catalogue">Catalogue</a></li><li><a href="/healthz">Status</a></li></ul></nav>'
)


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    price: float
    sku: str


def _product(index: int) -> Product:
    """Everything derives from the index, so every process and run agrees on it."""
    number = index + 1
    adjective = _ADJECTIVES[index % len(_ADJECTIVES)]
    noun = _NOUNS[(index // len(_ADJECTIVES)) % len(_NOUNS)]
    digest = hashlib.sha256(f"shop:{number}".encode()).digest()
    cents = 100 + int.from_bytes(digest[:8], "big") % 49_901  # 1.00 .. 500.00
    # zero-padded, so no name is a prefix of another (e.g. "... 1" of "... 10")
    return Product(number, f"{adjective} {noun} {number:03d}", cents / 100, f"SKU-{number:05d}")


def catalogue(count: int = DEFAULT_PRODUCTS) -> list[Product]:
    """The shop's products; tests compare what a fetcher got against this."""
    return [_product(i) for i in range(count)]


@dataclass
class ShopStats:
    """Requests per path (without query) and per status, so tests can check what a crawl sent."""

    per_path: Counter[str] = field(default_factory=Counter)
    per_status: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": sum(self.per_path.values()),
            "per_path": dict(self.per_path),
            "per_status": {str(k): v for k, v in sorted(self.per_status.items())},
        }

    def reset(self) -> None:
        self.per_path.clear()
        self.per_status.clear()


class _CountRequests:
    """Pure ASGI middleware: Starlette's BaseHTTPMiddleware would cost the benchmark."""

    def __init__(self, app: ASGIApp, stats: ShopStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/__") or path == "/healthz":
            await self.app(scope, receive, send)
            return
        self.stats.per_path[path] += 1

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.stats.per_status[int(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


@dataclass
class _State:
    api_version: int
    fail_next: int
    token: str
    sessions: set[str] = field(default_factory=set)


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body).encode(), status_code=status, media_type=_JSON, headers=headers
    )


def _int_param(request: Request, name: str, default: int) -> int | None:
    """A positive integer query parameter, or None when it is not one."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset={offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, _, value = text.partition("=")
    if name != "offset" or not value.isdigit():
        return None
    return int(value)


def create_shop_app(
    *,
    products: int = DEFAULT_PRODUCTS,
    page_size: int = DEFAULT_PAGE_SIZE,
    api_version: int = 1,
    login_required: bool = False,
    username: str = "",
    password: str = "",
    fail_next: int = 0,
) -> FastAPI:
    """Build the shop; the bearer token is random per app, so a replayed one goes stale."""
    if products < 0:
        raise ValueError(f"products must be >= 0, got {products}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be within [1, {MAX_PAGE_SIZE}], got {page_size}")
    if api_version not in (1, 2):
        raise ValueError(f"api_version must be 1 or 2, got {api_version}")
    if login_required and not (username and password):
        raise ValueError("login_required needs a username and a password")
    if fail_next < 0:
        raise ValueError(f"fail_next must be >= 0, got {fail_next}")
    items = catalogue(products)
    state = _State(api_version, fail_next, secrets.token_urlsafe(24))
    stats = ShopStats()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stats = stats
    app.state.shop = state
    app.add_middleware(_CountRequests, stats=stats)
    unauthorized = _json({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})

    def logged_in(request: Request) -> bool:
        return not login_required or request.cookies.get(SESSION_COOKIE, "") in state.sessions

    def api_refusal(request: Request) -> Response | None:
        """503 while ``fail_next`` lasts (before auth, like a load balancer), then 401s."""
        if state.fail_next > 0:
            state.fail_next -= 1
            return _json({"error": "temporarily unavailable"}, 503, {"Retry-After": "1"})
        if request.url.path == "/api/session" or request.url.path == "/api/config":
            return None
        expected = f"Bearer {state.token}"
        if not secrets.compare_digest(request.headers.get("authorization", ""), expected):
            return unauthorized
        return None

    @lru_cache(maxsize=1024)  # page numbers are client input: bounded
    def v1_page(page: int, per_page: int) -> bytes:
        chunk = items[(page - 1) * per_page : page * per_page]
        body = {
            "products": [
                {"id": p.id, "name": p.name, "price": p.price, "sku": p.sku} for p in chunk
            ],
            "page": page,
            "total_pages": max(1, math.ceil(len(items) / per_page)),
        }
        return json.dumps(body).encode()

    @lru_cache(maxsize=1024)  # page numbers are client input: bounded
    def v2_page(offset: int, limit: int) -> bytes:
        chunk = items[offset : offset + limit]
        following = offset + limit
        body = {
            "data": {"items": [{"code": p.sku, "title": p.name, "amount": p.price} for p in chunk]},
            "next_cursor": _encode_cursor(following) if following < len(items) else None,
        }
        return json.dumps(body).encode()

    async def session(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        if not logged_in(request):
            return _json({"error": "login required"}, 401)
        return _json({"token": state.token})

    async def config(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        return _json({"currency": "USD", "locale": "en-US", "features": {"reviews": False}})

    async def products_v1(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        if state.api_version != 1:
            return _json({"error": "this API version is gone"}, 410)
        page = _int_param(request, "page", 1)
        per_page = _int_param(request, "per_page", page_size)
        if page is None or per_page is None or per_page > MAX_PAGE_SIZE:
            return _json({"error": f"page >= 1 and 1 <= per_page <= {MAX_PAGE_SIZE}"}, 400)
        return Response(v1_page(page, per_page), media_type=_JSON)

    async def items_v2(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        if state.api_version != 2:
            return _json({"error": "not found"}, 404)
        limit = _int_param(request, "limit", page_size)
        cursor = request.query_params.get("cursor")
        offset = 0 if cursor is None else _decode_cursor(cursor)
        if limit is None or limit > MAX_PAGE_SIZE or offset is None:
            return _json({"error": f"a valid cursor and 1 <= limit <= {MAX_PAGE_SIZE}"}, 400)
        return Response(v2_page(offset, limit), media_type=_JSON)

    app.add_route("/api/session", session, methods=["GET"], include_in_schema=False)
    app.add_route("/api/config", config, methods=["GET"], include_in_schema=False)
    app.add_route("/api/v1/products", products_v1, methods=["GET"], include_in_schema=False)
    app.add_route("/api/v2/catalog/items", items_v2, methods=["GET"], include_in_schema=False)

    @app.get("/shop/")
    async def shop(request: Request) -> Response:
        if not logged_in(request):
            return RedirectResponse("/login?next=" + quote("/shop/", safe=""), status_code=303)
        return HTMLResponse(_shop_page(state.api_version, page_size))

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        return HTMLResponse(_login_page(_safe_next(request.query_params.get("next"))))

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"), keep_blank_values=True)
        given_user = form.get("username", [""])[0]
        given_password = form.get("password", [""])[0]
        target = _safe_next(form.get("next", [None])[0])
        valid = bool(username) and secrets.compare_digest(
            given_user.encode(), username.encode()
        ) & secrets.compare_digest(given_password.encode(), password.encode())
        if not valid:
            return HTMLResponse(_login_page(target, error=True), status_code=401)
        session_id = secrets.token_urlsafe(24)
        state.sessions.add(session_id)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax")
        return response

    @app.get("/catalogue")
    async def catalogue_page(request: Request) -> Response:
        page = _int_param(request, "page", 1)
        total_pages = max(1, math.ceil(len(items) / page_size))
        if page is None:
            return HTMLResponse("<h1>Bad page</h1>", status_code=400)
        if page > total_pages:
            return HTMLResponse("<h1>No such page</h1>", status_code=404)
        chunk = items[(page - 1) * page_size : page * page_size]
        return HTMLResponse(_catalogue_page(chunk, page, total_pages))

    @app.get("/static/app.css")
    async def stylesheet() -> Response:
        return Response(_CSS, media_type="text/css")

    @app.post("/analytics/collect")
    async def analytics(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/__stats")
    async def get_stats() -> dict[str, object]:
        return stats.as_dict()

    @app.post("/__stats/reset")
    async def reset_stats() -> dict[str, bool]:
        stats.reset()
        return {"ok": True}

    @app.post("/__admin/api_version")
    async def set_api_version(request: Request) -> Response:
        version = (await _json_body(request)).get("version")
        if version not in (1, 2) or isinstance(version, bool):
            return _json({"error": "version must be 1 or 2"}, 400)
        state.api_version = version
        return _json({"version": version})

    @app.post("/__admin/fail_next")
    async def set_fail_next(request: Request) -> Response:
        count = (await _json_body(request)).get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return _json({"error": "count must be an integer >= 0"}, 400)
        state.fail_next = count
        return _json({"fail_next": count})

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _safe_next(target: str | None) -> str:
    """Only local paths: a login form must not become an open redirect."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/shop/"


def _document(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><link rel="icon" href="data:,">{head}</head>\n'
        f"<body>{_NAV}\n{body}\n</body></html>\n"
    )


def _login_page(target: str, *, error: bool = False) -> str:
    message = '<p class="error">Wrong username or password.</p>' if error else ""
    form = (
        f'<h1>Sign in</h1>{message}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{html.escape(target)}">'
        '<label>Username <input name="username" autocomplete="username"></label> '
        '<label>Password <input type="password" name="password" '
        'autocomplete="current-password"></label> '
        '<button type="submit">Sign in</button></form>'
    )
    return _document("Sign in - Sandbox Shop", form)


def _catalogue_page(chunk: Sequence[Product], page: int, total_pages: int) -> str:
    rows = "\n".join(
        f'<li class="product" data-sku="{html.escape(p.sku)}">'
        f'<span class="name">{html.escape(p.name)}</span> '
        f'<span class="price">${p.price:.2f}</span></li>'
        for p in chunk
    )
    links = []
    if page > 1:
        links.append(f'<a rel="prev" href="/catalogue?page={page - 1}">Previous</a>')
    if page < total_pages:
        links.append(f'<a rel="next" href="/catalogue?page={page + 1}">Next</a>')
    body = (
        f"<h1>Catalogue</h1><p>Page {page} of {total_pages}</p>\n"
        f'<ul id="products">\n{rows}\n</ul>\n<p class="pager">{" ".join(links)}</p>'
    )
    return _document(f"Catalogue page {page} - Sandbox Shop", body)


# The page's script: no framework and no external assets, so the HAR holds only the shop.
_SHOP_SCRIPT = """
(function () {
  "use strict";
  const API_VERSION = __API_VERSION__;
  const PAGE_SIZE = __PAGE_SIZE__;
  const list = document.getElementById("products");
  const status = document.getElementById("status");
  const next = document.getElementById("next");
  let token = null;
  let page = 1;
  let cursor = null;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function api(path, auth) {
    for (let attempt = 1; ; attempt++) {
      const headers = auth ? { Authorization: "Bearer " + token } : {};
      const response = await fetch(path, { headers: headers, credentials: "same-origin" });
      if (response.status === 503 && attempt < 5) {
        await sleep(100 * attempt);
        continue;
      }
      if (!response.ok) throw new Error("HTTP " + response.status + " from " + path);
      return response.json();
    }
  }

  function track(event) {
    fetch("/analytics/collect", {
      method: "POST",
      keepalive: true,
      headers: { "Content-Type": "text/plain" },
      body: JSON.stringify({ event: event, page: page, ts: Date.now() }),
    }).catch(() => {});
  }

  function render(products) {
    list.replaceChildren();
    for (const p of products) {
      const li = document.createElement("li");
      li.className = "product";
      for (const [cls, text] of [
        ["name", p.name], ["price", "$" + p.price.toFixed(2)], ["sku", p.sku],
      ]) {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = text;
        li.append(span, " ");
      }
      list.append(li);
    }
  }

  async function load() {
    next.disabled = true;
    let products, more;
    if (API_VERSION === 1) {
      const body = await api("/api/v1/products?page=" + page + "&per_page=" + PAGE_SIZE, true);
      products = body.products;
      more = body.page < body.total_pages;
      status.textContent = "Page " + body.page + " of " + body.total_pages;
    } else {
      const query = (cursor === null ? "" : "cursor=" + encodeURIComponent(cursor) + "&");
      const body = await api("/api/v2/catalog/items?" + query + "limit=" + PAGE_SIZE, true);
      products = body.data.items.map((i) => ({ name: i.title, price: i.amount, sku: i.code }));
      cursor = body.next_cursor;
      more = cursor !== null;
      status.textContent = "Page " + page;
    }
    render(products);
    next.hidden = !more;
    next.disabled = !more;
    track("page_view");
  }

  next.addEventListener("click", () => {
    page += 1;
    load().catch(fail);
  });

  function fail(error) {
    status.textContent = "Error: " + error.message;
    next.hidden = true;
  }

  (async function start() {
    token = (await api("/api/session", false)).token;
    api("/api/config", false).catch(() => {});
    await load();
  })().catch(fail);
})();
"""


def _shop_page(api_version: int, page_size: int) -> str:
    script = _SHOP_SCRIPT.replace("__API_VERSION__", str(api_version)).replace(
        "__PAGE_SIZE__", str(page_size)
    )
    body = (
        '<h1>Sandbox Shop</h1><p id="status">Loading...</p>\n<ul id="products"></ul>\n'
        '<button id="next" type="button" hidden disabled>Next</button>\n'
        f"<script>{script}</script>"
    )
    return _document("Sandbox Shop", body, head='<link rel="stylesheet" href="/static/app.css">')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m crawlers.sandbox.shop", description="Run the sandbox shop."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS)
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--api-version", type=int, choices=(1, 2), default=1)
    parser.add_argument("--fail-next", type=int, default=0, help="503 to the next K /api/ calls")
    parser.add_argument("--login-required", action="store_true")
    parser.add_argument("--username", default="")
    parser.add_argument(
        "--password", default=None, help=f"login password (default: ${PASSWORD_ENV})"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV, "")
    app = create_shop_app(
        products=args.products,
        page_size=args.page_size,
        api_version=args.api_version,
        login_required=args.login_required,
        username=args.username,
        password=password,
        fail_next=args.fail_next,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
