"""Fetcher analysis on hand-made HAR captures shaped like the sandbox shop's.

The builders below (``shop_v1_har``...) are also used by the generate and runtime tests;
they mirror what the browser capture records: HAR 1.2 entries with embedded content and
the visible text of each page state.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from crawlers.fetchers.analysis import NoDataFound, analyse, find_api, find_dom, html_pages_of
from crawlers.fetchers.recipes import (
    RECIPE,
    ApiRecipe,
    Auth,
    DomRecipe,
    FieldSelector,
    Pagination,
    TokenSource,
)

HOST = "https://shop.test"
TOKEN = "tok-3f9a1c2b7d4e5f60a1b2c3d4"
API_KEY = "key-8c1d2e3f4a5b6c7d8e9f0a1b"
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "sid=c0ffee1234567890abcdef"),
    ("sec-fetch-mode", "cors"),
    ("Referer", f"{HOST}/"),
]
_ADJECTIVES = ["Alpine", "Brass", "Cedar", "Dune", "Ember", "Fjord", "Granite", "Harbor"]
_NOUNS = ["Kettle", "Lamp", "Mug", "Notebook", "Pan", "Quilt", "Rug"]


def products(count: int = 50) -> list[dict[str, Any]]:
    """The shop's catalogue: unique names, prices with cents, SKUs."""
    return [
        {
            "id": i,
            "name": f"{_ADJECTIVES[(i - 1) % 8]} {_NOUNS[(i - 1) // 8]}",
            "price": round(4.5 + i * 1.25, 2),
            "sku": f"SKU-{1000 + i}",
        }
        for i in range(1, count + 1)
    ]


def chunks(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def page_text(items: list[dict[str, Any]], number: int = 1) -> str:
    """What a person sees: a header, each product's name and price, a footer."""
    shown = "\n".join(f"{item['name']}\n\N{EURO SIGN}{item['price']:.2f}" for item in items)
    return f"Acme Shop\nHome  Catalogue  About\n{shown}\nPage {number}\n\u00a9 2026 Acme"


def entry(
    url: str,
    body: Any = None,
    *,
    method: str = "GET",
    status: int = 200,
    mime: str = "application/json",
    headers: list[tuple[str, str]] | None = None,
    post: str | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """One HAR 1.2 entry; ``body`` is JSON-encoded unless it is text already."""
    text = body if body is None or isinstance(body, str) else json.dumps(body)
    content: dict[str, Any] = {"size": len(text or ""), "mimeType": mime}
    if text is not None:
        if base64_body:
            content |= {"text": base64.b64encode(text.encode()).decode(), "encoding": "base64"}
        else:
            content["text"] = text
    request: dict[str, Any] = {
        "method": method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "headers": [{"name": n, "value": v} for n, v in headers or []],
        "queryString": [
            {"name": n, "value": v}
            for n, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
        ],
        "cookies": [],
        "headersSize": -1,
        "bodySize": len(post or ""),
    }
    if post is not None:
        request["postData"] = {"mimeType": "application/json", "text": post}
    return {
        "request": request,
        "response": {
            "status": status,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Content-Type", "value": mime}],
            "cookies": [],
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": content["size"],
        },
        "cache": {},
        "timings": {"send": 0, "wait": 1, "receive": 0},
    }


def har(*entries: dict[str, Any]) -> dict[str, Any]:
    """A HAR log with the entries in order (one second apart)."""
    for number, item in enumerate(entries):
        item["startedDateTime"] = f"2026-11-30T10:{number // 60:02d}:{number % 60:02d}.000Z"
        item["time"] = 1
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "hydra", "version": "1"},
            "entries": [*entries],
        }
    }


def noise() -> list[dict[str, Any]]:
    """What every page loads besides its data: assets, config, analytics, tracking."""
    return [
        entry(f"{HOST}/static/app.css", "body{margin:0}", mime="text/css"),
        entry(f"{HOST}/static/app.js", "fetch('/api/session')", mime="application/javascript"),
        entry(f"{HOST}/api/config", {"currency": "EUR", "locale": "en", "features": {"x": True}}),
        entry(f"{HOST}/analytics/collect", None, method="POST", status=204, mime="", post="{}"),
    ]


def tracked(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A tracking call that echoes the products shown: visible values, still noise."""
    return entry(f"{HOST}/api/track/impressions", {"seen": items})


def v1_page(items: list[dict[str, Any]], number: int, total: int) -> dict[str, Any]:
    return {"products": items, "page": number, "total_pages": total}


def shop_v1_har(catalogue: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The JS shop on its v1 API: a token from /api/session, then page=1..3 with a bearer
    token; the recommendations list is JSON too, but not shown."""
    pages = chunks(catalogue if catalogue is not None else products(), 20)
    auth = [*BROWSER_HEADERS, ("Accept", "application/json"), ("Authorization", f"Bearer {TOKEN}")]
    shell = '<html><body><div id="app"></div><script src="/static/app.js"></script></body></html>'
    entries = [
        entry(f"{HOST}/", shell, mime="text/html; charset=utf-8"),
        *noise(),
        entry(f"{HOST}/api/session", {"token": TOKEN, "expires_in": 3600}),
        entry(
            f"{HOST}/api/v1/recommendations",
            {"items": [{"id": 900 + i, "name": f"Hidden Gem {i}"} for i in range(5)]},
        ),
    ]
    for number, items in enumerate(pages, 1):
        url = f"{HOST}/api/v1/products?page={number}&per_page=20"
        entries.append(entry(url, v1_page(items, number, len(pages)), headers=auth))
        entries.append(tracked(items))
    return har(*entries), [page_text(items, n) for n, items in enumerate(pages, 1)]


V1_RECIPE = ApiRecipe(
    endpoint=f"{HOST}/api/v1/products",
    params={"per_page": "20"},
    headers={"Accept": "application/json"},
    auth=Auth(
        header="Authorization",
        scheme="Bearer",
        token_source=TokenSource(url=f"{HOST}/api/session", json_path=["token"]),
    ),
    pagination=Pagination(
        kind="page",
        param="page",
        size_param="per_page",
        size=20,
        total_pages_path=["total_pages"],
    ),
    items_path=["products"],
    fields=["id", "name", "price", "sku"],
    id_field="id",
)


def cursor_of(number: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": number * 20}).encode()).decode()


def v2_item(product: dict[str, Any]) -> dict[str, Any]:
    return {"code": product["sku"], "title": product["name"], "amount": product["price"]}


def v2_page(items: list[dict[str, Any]], number: int, last: bool) -> dict[str, Any]:
    cursor = None if last else cursor_of(number + 1)
    return {"data": {"items": [v2_item(p) for p in items]}, "next_cursor": cursor}


def shop_v2_har() -> tuple[dict[str, Any], list[str]]:
    """The shop after its API change: /api/v2/catalog/items with cursor pagination."""
    pages = chunks(products(), 20)
    auth = [*BROWSER_HEADERS, ("Authorization", f"Bearer {TOKEN}")]
    entries = [*noise(), entry(f"{HOST}/api/session", {"token": TOKEN})]
    for number, items in enumerate(pages):
        query = "limit=20" if number == 0 else f"cursor={cursor_of(number)}&limit=20"
        body = v2_page(items, number, number == len(pages) - 1)
        entries.append(entry(f"{HOST}/api/v2/catalog/items?{query}", body, headers=auth))
    return har(*entries), [page_text(items, n) for n, items in enumerate(pages, 1)]


V2_RECIPE = ApiRecipe(
    endpoint=f"{HOST}/api/v2/catalog/items",
    params={"limit": "20"},
    auth=V1_RECIPE.auth,
    pagination=Pagination(
        kind="cursor", param="cursor", cursor_path=["next_cursor"], size_param="limit", size=20
    ),
    items_path=["data", "items"],
    fields=["code", "title", "amount"],
    id_field="code",
)


def offset_har() -> tuple[dict[str, Any], list[str]]:
    """An API keyed by the task's api_key in X-Api-Key, paged by offset=0,10,20."""
    pages = chunks(products(25), 10)
    headers = [*BROWSER_HEADERS, ("X-Api-Key", API_KEY)]
    entries = [
        entry(
            f"{HOST}/api/items?offset={n * 10}&limit=10",
            {"results": items, "total": 25},
            headers=headers,
        )
        for n, items in enumerate(pages)
    ]
    return har(*noise(), *entries), [page_text(items) for items in pages]


def next_link_har() -> tuple[dict[str, Any], list[str]]:
    """An API whose answers link the next page; the key travels in the query."""
    pages = chunks(products(30), 12)
    entries = []
    for number, items in enumerate(pages, 1):
        url = f"{HOST}/api/products?key={API_KEY}" + (f"&page={number}" if number > 1 else "")
        following = f"/api/products?key={API_KEY}&page={number + 1}"
        body = {"items": items, "links": {"next": following if number < len(pages) else None}}
        entries.append(entry(url, body, base64_body=True))
    return har(*noise(), *entries), [page_text(items) for items in pages]


def catalogue_html(items: list[dict[str, Any]], number: int, last: bool) -> str:
    """The server-rendered catalogue: a nav menu, the products, a next link."""
    rows = "\n".join(
        f'  <li class="product" data-sku="{p["sku"]}">'
        f'<a class="name" href="/p/{p["id"]}">{p["name"]}</a>'
        f'<span class="price">\N{EURO SIGN}{p["price"]:.2f}</span></li>'
        for p in items
    )
    following = "" if last else f'<a rel="next" href="/catalogue?page={number + 1}">Next</a>'
    return f"""<!doctype html><html><head><title>Catalogue</title>
<script>window.analytics = [1, 2, 3];</script></head><body>
<nav><ul class="menu"><li><a href="/">Home</a></li><li><a href="/catalogue">Catalogue</a></li>
<li><a href="/about">About</a></li></ul></nav>
<ul id="products">
{rows}
</ul>
<div class="pager">{following}</div>
</body></html>"""


def catalogue_har() -> tuple[dict[str, Any], list[str]]:
    """A catalogue without a data API: three HTML pages, plus the usual noise."""
    pages = chunks(products(24), 10)
    entries = []
    for number, items in enumerate(pages, 1):
        url = f"{HOST}/catalogue" + (f"?page={number}" if number > 1 else "")
        html = catalogue_html(items, number, number == len(pages))
        entries.append(entry(url, html, mime="text/html; charset=utf-8"))
    return har(*entries, *noise()), [page_text(items, n) for n, items in enumerate(pages, 1)]


CATALOGUE_RECIPE = DomRecipe(
    start_url=f"{HOST}/catalogue",
    item_selector="#products > li.product",
    fields={
        "sku": FieldSelector(attr="data-sku"),
        "name": FieldSelector(css=".name"),
        "name_url": FieldSelector(css=".name", attr="href"),
        "price": FieldSelector(css=".price"),
    },
    next_selector="a[rel~=next]",
    id_field="sku",
)


# --- the API ---------------------------------------------------------------------------


def test_v1_page_pagination_with_a_fresh_bearer_token() -> None:
    capture, texts = shop_v1_har()
    assert find_api(capture, texts) == V1_RECIPE


def test_the_token_and_browser_headers_never_reach_the_recipe() -> None:
    capture, texts = shop_v1_har()
    recipe = analyse(capture, texts)
    blob = recipe.model_dump_json()
    for secret in (TOKEN, "c0ffee1234567890abcdef", "HeadlessChrome", "gzip"):
        assert secret not in blob
    assert RECIPE.validate_json(blob) == recipe


def test_v2_cursor_pagination_and_nested_items() -> None:
    capture, texts = shop_v2_har()
    assert find_api(capture, texts) == V2_RECIPE


def test_offset_pagination_with_a_key_from_auth_keys() -> None:
    capture, texts = offset_har()
    recipe = find_api(capture, texts, {"api_key": API_KEY, "bearer_token": None})
    assert recipe == ApiRecipe(
        endpoint=f"{HOST}/api/items",
        params={"limit": "10"},
        auth=Auth(header="X-Api-Key", scheme="", auth_key="api_key"),
        pagination=Pagination(
            kind="offset", param="offset", start=0, step=10, size_param="limit", size=10
        ),
        items_path=["results"],
        fields=["id", "name", "price", "sku"],
        id_field="id",
    )
    assert API_KEY not in recipe.model_dump_json()


def test_next_link_pagination_with_the_key_in_the_query() -> None:
    capture, texts = next_link_har()
    recipe = find_api(capture, texts, {"api_key": API_KEY})
    assert recipe == ApiRecipe(
        endpoint=f"{HOST}/api/products",
        auth=Auth(header=None, param="key", scheme="", auth_key="api_key"),
        pagination=Pagination(kind="next_link", next_path=["links", "next"]),
        items_path=["items"],
        fields=["id", "name", "price", "sku"],
        id_field="id",
    )
    assert API_KEY not in recipe.model_dump_json()


def test_a_single_page_is_paginated_by_its_names() -> None:
    """With one page in the capture, the page parameter and total_pages key still tell."""
    catalogue = products(50)
    capture = har(
        entry(f"{HOST}/api/session", {"token": TOKEN}),
        entry(
            f"{HOST}/api/v1/products?page=1&per_page=20",
            v1_page(catalogue[:20], 1, 3),
            headers=[("Authorization", f"Bearer {TOKEN}")],
        ),
    )
    assert find_api(capture, [page_text(catalogue[:20])]) == V1_RECIPE.model_copy(
        update={"headers": {}}
    )


def test_a_single_cursor_page_names_the_cursor_parameter() -> None:
    first = v2_page(products(20), 0, last=False)
    capture = har(entry(f"{HOST}/api/v2/catalog/items?limit=20", first))
    recipe = find_api(capture, [page_text(products(20))])
    assert recipe is not None
    assert recipe.pagination == Pagination(
        kind="cursor", param="cursor", cursor_path=["next_cursor"], size_param="limit", size=20
    )
    assert recipe.auth is None


def test_lists_the_page_does_not_show_are_not_data() -> None:
    capture, _ = shop_v1_har()
    with pytest.raises(NoDataFound) as failure:
        analyse(capture, ["Acme Shop", "nothing else"])
    assert any("shows values of 0%" in reason for reason in failure.value.reasons)
    assert TOKEN not in str(failure.value)


def test_tracking_calls_are_noise_even_when_they_echo_the_products() -> None:
    items = products(20)
    capture = har(
        *noise(), tracked(items), entry(f"{HOST}/pixel.gif?e=1", "GIF89a", mime="image/gif")
    )
    assert find_api(capture, [page_text(items)]) is None


def test_an_untraceable_credential_is_dropped_not_replayed() -> None:
    items = products(20)
    capture = har(
        entry(
            f"{HOST}/api/items",
            {"items": items},
            headers=[
                ("Authorization", "Bearer stale-9f8e7d6c5b4a39281706"),
                ("X-Requested-With", "fetch"),
            ],
        )
    )
    recipe = find_api(capture, [page_text(items)])
    assert recipe is not None and recipe.auth is None
    assert recipe.headers == {"X-Requested-With": "fetch"}
    assert "stale-9f8e7d6c5b4a39281706" not in recipe.model_dump_json()


def test_a_long_value_from_an_earlier_answer_is_a_credential_whatever_its_header() -> None:
    items = products(20)
    capture = har(
        entry(f"{HOST}/api/bootstrap", {"session": {"csrf": TOKEN}}),
        entry(f"{HOST}/api/items", {"items": items}, headers=[("X-Session", TOKEN)]),
    )
    recipe = find_api(capture, [page_text(items)])
    assert recipe is not None
    assert recipe.auth == Auth(
        header="X-Session",
        scheme="",
        token_source=TokenSource(url=f"{HOST}/api/bootstrap", json_path=["session", "csrf"]),
    )
    assert recipe.headers == {}


def test_a_cache_buster_is_dropped_and_a_list_at_the_root_is_found() -> None:
    items = products(40)
    capture = har(
        entry(f"{HOST}/api/items?p=1&_=1732960000", items[:20]),
        entry(f"{HOST}/api/items?p=2&_=1732960007", items[20:]),
    )
    recipe = find_api(capture, [page_text(items)])
    assert recipe is not None
    assert recipe.items_path == []
    assert recipe.params == {}
    assert recipe.pagination == Pagination(kind="page", param="p", start=1)


# --- the DOM and the fallback ------------------------------------------------------------


def test_no_data_api_falls_back_to_the_server_rendered_catalogue() -> None:
    capture, texts = catalogue_har()
    assert find_api(capture, texts) is None
    assert analyse(capture, texts) == CATALOGUE_RECIPE


def test_find_dom_from_pages_alone() -> None:
    capture, _ = catalogue_har()
    pages = html_pages_of(capture)
    assert [url for url, _ in pages] == [
        f"{HOST}/catalogue",
        f"{HOST}/catalogue?page=2",
        f"{HOST}/catalogue?page=3",
    ]
    assert find_dom(pages) == CATALOGUE_RECIPE


def test_a_next_link_without_rel_is_found_by_its_text() -> None:
    items = products(5)
    html = catalogue_html(items, 1, last=True).replace(
        '<div class="pager"></div>', '<div class="pager"><a href="?page=2">Next \u203a</a></div>'
    )
    recipe = find_dom([(f"{HOST}/catalogue", html)])
    assert recipe is not None
    assert recipe.next_selector == "div.pager > a"


def test_table_rows_are_anchored_on_the_tables_id() -> None:
    rows = "".join(
        f'<tr><td class="name">{p["name"]}</td><td class="price">{p["price"]:.2f}</td></tr>'
        for p in products(6)
    )
    head = "<thead><tr><th>Name</th><th>Price</th></tr></thead>"
    html = f'<table id="prices">{head}<tbody>{rows}</tbody></table>'
    recipe = find_dom([(f"{HOST}/prices", html)], [page_text(products(6))])
    assert recipe == DomRecipe(
        start_url=f"{HOST}/prices",
        item_selector="#prices tbody > tr",
        fields={"name": FieldSelector(css=".name"), "price": FieldSelector(css=".price")},
    )


def test_nothing_repeated_means_no_data() -> None:
    shell = '<html><body><div id="app"></div><p>Loading</p></body></html>'
    capture = har(entry(f"{HOST}/", shell, mime="text/html"), *noise())
    with pytest.raises(NoDataFound) as failure:
        analyse(capture, ["Acme Shop"])
    assert failure.value.reasons == [
        "no 2xx JSON answer holds a list of at least 2 objects",
        "no element repeats 3+ times with text fields in 1 HTML page(s)",
    ]


def test_dom_items_must_be_visible_when_page_texts_are_given() -> None:
    capture, _ = catalogue_har()
    assert find_dom(html_pages_of(capture), ["Acme Shop, an empty page"]) is None
