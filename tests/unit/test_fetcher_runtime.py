"""The runtime walks every page of a recipe against hand-made responses, and classifies
what goes wrong: a changed site (heal), a refused credential, a transient failure."""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr
from scrapy import Request
from scrapy.http import TextResponse

from crawlers.fetchers.generate import render_module
from crawlers.fetchers.recipes import ApiRecipe, Auth, Pagination, TokenSource
from crawlers.fetchers.runtime import (
    STEP,
    ApiFetcher,
    AuthRejected,
    BaseFetcher,
    DomFetcher,
    SiteChanged,
    TransientFailure,
    fetcher_for,
)
from tests.unit.test_fetcher_analysis import (
    API_KEY,
    CATALOGUE_RECIPE,
    HOST,
    TOKEN,
    V1_RECIPE,
    V2_RECIPE,
    catalogue_html,
    chunks,
    products,
    v1_page,
    v2_item,
    v2_page,
)
from tests.unit.test_fetcher_generate import _import

Serve = Callable[[Request], TextResponse]


def respond(
    request: Request, body: Any, status: int = 200, mime: str = "application/json"
) -> TextResponse:
    text = body if isinstance(body, str) else json.dumps(body)
    return TextResponse(
        request.url,
        status=status,
        body=text.encode(),
        encoding="utf-8",
        headers={"Content-Type": mime},
        request=request,
    )


class Shop:
    """The sandbox shop's answers: a token, v1 pages behind it, the v2 cursor API, the
    offset and next-link APIs keyed by API_KEY, the HTML catalogue; ``change`` alters v1."""

    def __init__(self, change: str = "", catalogue: list[dict[str, Any]] | None = None) -> None:
        self.change = change
        self.catalogue = catalogue if catalogue is not None else products()
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> TextResponse:
        self.requests.append(request)
        url = urlsplit(request.url)
        query = dict(parse_qsl(url.query))
        bearer = request.headers.get("Authorization") == f"Bearer {TOKEN}".encode()
        if url.path == "/api/session":
            return respond(request, {"token": TOKEN})
        if url.path == "/api/v1/products":
            return self._v1(request, query, bearer)
        if url.path == "/api/v2/catalog/items":
            number = (
                int(json.loads(_b64(query["cursor"]))["offset"]) // 20 if "cursor" in query else 0
            )
            pages = chunks(self.catalogue, 20)
            return respond(request, v2_page(pages[number], number, number == len(pages) - 1))
        if url.path == "/api/items":
            if request.headers.get("X-Api-Key") != API_KEY.encode():
                return respond(request, {"error": "key"}, 403)
            offset, limit = int(query["offset"]), int(query["limit"])
            return respond(request, {"results": self.catalogue[offset : offset + limit]})
        if url.path == "/api/products":
            if query.get("key") != API_KEY:
                return respond(request, {"error": "key"}, 401)
            pages = chunks(self.catalogue, 12)
            number = int(query.get("page", 1))
            following = f"/api/products?page={number + 1}" if number < len(pages) else None
            return respond(request, {"items": pages[number - 1], "links": {"next": following}})
        if url.path == "/catalogue":
            pages = chunks(self.catalogue, 10)
            number = int(query.get("page", 1))
            html = catalogue_html(pages[number - 1], number, number == len(pages))
            if self.change == "redesign":
                html = html.replace('class="product"', 'class="card"')
            return respond(request, html, mime="text/html")
        return respond(request, {"error": "not found"}, 404)

    def _v1(self, request: Request, query: dict[str, str], bearer: bool) -> TextResponse:
        if self.change in ("gone", "503", "429"):
            return respond(
                request, {"error": self.change}, {"gone": 410}.get(self.change) or int(self.change)
            )
        if not bearer:
            return respond(request, {"error": "unauthorised"}, 401)
        per_page = int(query["per_page"])
        pages = chunks(self.catalogue, per_page)
        number = 1 if self.change == "stuck" else int(query.get("page", 1))
        items = pages[number - 1] if number <= len(pages) else []
        if self.change == "renamed":
            return respond(request, {"products": [v2_item(p) for p in items], "page": number})
        if self.change == "moved":
            return respond(request, {"data": {"items": items}})
        if self.change == "html":
            return respond(request, "<html>Maintenance</html>", mime="text/html")
        return respond(request, v1_page(items, number, len(pages)))


def _b64(text: str) -> str:
    return base64.urlsafe_b64decode(text.encode()).decode()


def walk(
    fetcher: BaseFetcher, serve: Serve, auth_keys: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """What the spider does: first requests, then parse every answer, depth first."""
    items: list[dict[str, Any]] = []
    pending = deque(fetcher.first_requests(auth_keys))
    while pending:
        page_items, follow = fetcher.parse(serve(pending.popleft()))
        items.extend(page_items)
        pending.extend(follow)
    return items


def test_v1_walks_every_page_with_a_fresh_token() -> None:
    shop = Shop()
    fetcher = ApiFetcher(V1_RECIPE)
    first = fetcher.first_requests()
    assert [(r.url, r.meta[STEP]) for r in first] == [(f"{HOST}/api/session", "token")]
    assert walk(fetcher, shop) == products()
    pages = [r for r in shop.requests if r.meta[STEP] == "page"]
    assert [r.url for r in pages] == [
        f"{HOST}/api/v1/products?per_page=20&page={n}" for n in (1, 2, 3)
    ]
    assert {r.headers.get("Authorization") for r in pages} == {f"Bearer {TOKEN}".encode()}
    assert {r.headers.get("Accept") for r in pages} == {b"application/json"}


def test_without_a_total_page_count_an_empty_page_ends_the_walk() -> None:
    shop = Shop()
    pagination = V1_RECIPE.pagination.model_copy(update={"total_pages_path": None})
    recipe = V1_RECIPE.model_copy(update={"pagination": pagination})
    assert walk(ApiFetcher(recipe), shop) == products()
    assert [r.url.rsplit("=", 1)[-1] for r in shop.requests[1:]] == ["1", "2", "3", "4"]


def test_a_generated_module_runs_the_same_walk(tmp_path: Path) -> None:
    path = tmp_path / "shop_test_fetcher_v1.py"
    path.write_text(render_module(V1_RECIPE, domain="shop.test", version=1, reason="new channel"))
    module = _import(path)
    assert walk(module.Fetcher(), Shop()) == products()


def test_v2_follows_cursors_until_null() -> None:
    shop = Shop()
    items = walk(ApiFetcher(V2_RECIPE), shop)
    assert items == [v2_item(p) for p in products()]
    cursors = [dict(parse_qsl(urlsplit(r.url).query)).get("cursor") for r in shop.requests[1:]]
    assert cursors[0] is None and len(cursors) == 3


def test_offset_pages_with_the_tasks_key() -> None:
    recipe = ApiRecipe(
        endpoint=f"{HOST}/api/items",
        params={"limit": "10"},
        auth=Auth(header="X-Api-Key", scheme="", auth_key="api_key"),
        pagination=Pagination(kind="offset", param="offset", start=0, step=10),
        items_path=["results"],
        fields=["sku", "price"],
    )
    shop = Shop(catalogue=products(25))
    items = walk(ApiFetcher(recipe), shop, {"api_key": SecretStr(API_KEY)})
    assert items == [{"sku": p["sku"], "price": p["price"]} for p in products(25)]
    assert [r.url.rsplit("offset=", 1)[-1] for r in shop.requests] == ["0", "10", "20", "30"]
    with pytest.raises(AuthRejected, match=r"auth_keys\.api_key"):
        ApiFetcher(recipe).first_requests({"bearer_token": SecretStr("x")})


def test_next_links_with_the_key_in_the_query() -> None:
    recipe = ApiRecipe(
        endpoint=f"{HOST}/api/products",
        auth=Auth(header=None, param="key", scheme="", auth_key="api_key"),
        pagination=Pagination(kind="next_link", next_path=["links", "next"]),
        items_path=["items"],
        fields=["id", "name", "price", "sku"],
    )
    shop = Shop(catalogue=products(30))
    assert walk(ApiFetcher(recipe), shop, {"api_key": API_KEY}) == products(30)
    assert len(shop.requests) == 3


def test_the_dom_fetcher_follows_next_links() -> None:
    shop = Shop(catalogue=products(24))
    items = walk(fetcher_for(CATALOGUE_RECIPE), shop)
    assert len(items) == 24
    assert items[0] == {
        "sku": "SKU-1001",
        "name": "Alpine Kettle",
        "name_url": "/p/1",
        "price": "\N{EURO SIGN}5.75",
    }
    assert [r.url for r in shop.requests] == [
        f"{HOST}/catalogue",
        f"{HOST}/catalogue?page=2",
        f"{HOST}/catalogue?page=3",
    ]


def test_a_dom_fetcher_starts_at_the_channels_page() -> None:
    fetcher = DomFetcher(CATALOGUE_RECIPE)
    [request] = fetcher.first_requests(url=f"{HOST}/catalogue?page=3")
    assert request.url == f"{HOST}/catalogue?page=3"


# --- what goes wrong ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("renamed", SiteChanged, "no item has the fields id, name, price, sku"),
        ("moved", SiteChanged, "has no items at"),
        ("gone", SiteChanged, "answered 410"),
        ("html", SiteChanged, "no longer answers JSON"),
        ("stuck", SiteChanged, "repeats the previous page"),
        ("503", TransientFailure, "answered 503"),
        ("429", TransientFailure, "answered 429"),
    ],
)
def test_a_changed_site_is_told_from_a_transient_failure(
    change: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as failure:
        walk(ApiFetcher(V1_RECIPE), Shop(change))
    assert TOKEN not in str(failure.value)


def test_classifications() -> None:
    assert SiteChanged("x").classification == "website_changed"
    assert AuthRejected("x").classification == "auth"
    assert TransientFailure("x").classification == "transient"


def test_a_refused_credential_is_not_a_site_change() -> None:
    recipe = V1_RECIPE.model_copy(update={"auth": None})
    with pytest.raises(AuthRejected, match="answered 401"):
        walk(ApiFetcher(recipe), Shop())


def test_a_moved_token_endpoint_or_token_is_a_site_change() -> None:
    def with_token(url: str, path: list[str | int]) -> ApiRecipe:
        source = TokenSource(url=url, json_path=path)
        return V1_RECIPE.model_copy(update={"auth": Auth(token_source=source)})

    with pytest.raises(SiteChanged, match="answered 404"):
        walk(ApiFetcher(with_token(f"{HOST}/api/login", ["token"])), Shop())
    with pytest.raises(SiteChanged, match=r"holds no token at \['access_token'\]"):
        walk(ApiFetcher(with_token(f"{HOST}/api/session", ["access_token"])), Shop())


def test_a_redesigned_page_is_a_site_change() -> None:
    with pytest.raises(SiteChanged, match="matches nothing"):
        walk(DomFetcher(CATALOGUE_RECIPE), Shop("redesign", products(24)))


def test_max_pages_bounds_a_walk() -> None:
    shop = Shop()
    items = walk(ApiFetcher(V1_RECIPE, max_pages=2), shop)
    assert items == products()[:40]


def test_statuses_to_classify_reach_parse() -> None:
    [request] = ApiFetcher(V2_RECIPE).first_requests()
    assert {401, 403, 404, 410} <= set(request.meta["handle_httpstatus_list"])
    assert request.dont_filter
