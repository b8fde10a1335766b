"""The sandbox shop app in process (FastAPI's TestClient): the contract captures and
generated fetchers rely on, checked without a browser."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from crawlers.sandbox.shop import SESSION_COOKIE, catalogue, create_shop_app

PRODUCTS = catalogue()


def client(**options: object) -> TestClient:
    return TestClient(create_shop_app(**options), follow_redirects=False)  # type: ignore[arg-type]


def bearer(api: TestClient) -> dict[str, str]:
    return {"Authorization": "Bearer " + api.get("/api/session").json()["token"]}


def test_catalogue_is_deterministic_and_names_are_unambiguous() -> None:
    assert len(PRODUCTS) == 57
    assert catalogue() == PRODUCTS
    assert [p.id for p in PRODUCTS] == list(range(1, 58))
    assert PRODUCTS[0].sku == "SKU-00001"
    names = [p.name for p in PRODUCTS]
    # no name inside another, so "name in page text" proves that very product was shown
    assert not [(a, b) for a in names for b in names if a != b and a in b]
    assert all(1.0 <= p.price <= 500.0 and round(p.price, 2) == p.price for p in PRODUCTS)


def test_v1_pages_need_the_session_token() -> None:
    api = client()
    assert api.get("/api/v1/products?page=1").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert api.get("/api/v1/products?page=1", headers=wrong).status_code == 401
    headers = bearer(api)
    seen = []
    for page, size in ((1, 20), (2, 20), (3, 17)):
        body = api.get(f"/api/v1/products?page={page}&per_page=20", headers=headers).json()
        assert set(body) == {"products", "page", "total_pages"}
        assert (body["page"], body["total_pages"], len(body["products"])) == (page, 3, size)
        seen += body["products"]
    assert seen == [{"id": p.id, "name": p.name, "price": p.price, "sku": p.sku} for p in PRODUCTS]
    assert api.get("/api/v1/products?page=0", headers=headers).status_code == 400
    assert api.get("/api/v1/products?per_page=101", headers=headers).status_code == 400


def test_each_app_has_its_own_token() -> None:
    assert client().get("/api/session").json() != client().get("/api/session").json()


def test_v2_moves_and_renames_and_v1_is_gone() -> None:
    api = client()
    headers = bearer(api)
    assert api.get("/api/v2/catalog/items", headers=headers).status_code == 404
    answer = api.post("/__admin/api_version", json={"version": 2})
    assert answer.json() == {"version": 2}
    assert api.get("/api/v1/products?page=1", headers=headers).status_code == 410
    assert api.get("/api/v2/catalog/items?limit=20").status_code == 401
    items, cursors, cursor = [], [], None
    while True:
        query = "limit=20" if cursor is None else f"cursor={cursor}&limit=20"
        body = api.get(f"/api/v2/catalog/items?{query}", headers=headers).json()
        assert set(body) == {"data", "next_cursor"}
        items += body["data"]["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert items == [{"code": p.sku, "title": p.name, "amount": p.price} for p in PRODUCTS]
    assert len(cursors) == 2 and not any(c.isdigit() for c in cursors)  # opaque
    assert api.get("/api/v2/catalog/items?cursor=%%%", headers=headers).status_code == 400
    assert api.post("/__admin/api_version", json={"version": 3}).status_code == 400
    assert api.post("/__admin/api_version", json={"version": 1}).status_code == 200
    assert api.get("/api/v1/products", headers=headers).status_code == 200


def test_page_script_follows_the_api_version() -> None:
    api = client(api_version=2)
    page = api.get("/shop/").text
    assert "const API_VERSION = 2;" in page
    assert '<button id="next" type="button" hidden disabled>Next</button>' in page
    assert 'href="/static/app.css"' in page and "http" not in page.split("<script>")[1]


def test_fail_next_answers_503_then_recovers() -> None:
    api = client(fail_next=2)
    assert [api.get("/api/session").status_code for _ in range(3)] == [503, 503, 200]
    headers = bearer(api)
    assert api.post("/__admin/fail_next", json={"count": 2}).json() == {"fail_next": 2}
    statuses = [api.get("/api/v1/products", headers=headers).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    # like a load balancer's: before the token is even looked at
    api.post("/__admin/fail_next", json={"count": 1})
    assert [api.get("/api/v1/products").status_code for _ in range(2)] == [503, 401]
    assert api.post("/__admin/fail_next", json={"count": -1}).status_code == 400


def test_noise_endpoints() -> None:
    api = client()
    config = api.get("/api/config").json()
    assert isinstance(config, dict)
    assert "[" not in json.dumps(config)  # no arrays: nothing a data analysis should pick
    assert api.post("/analytics/collect", content=b'{"event":"x"}').status_code == 204
    css = api.get("/static/app.css")
    assert css.headers["content-type"].startswith("text/css")


def test_login_gates_the_shop_and_the_session() -> None:
    api = client(login_required=True, username="ann", password="pw 1&2")
    answer = api.get("/shop/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fshop%2F"
    form = api.get("/login?next=%2Fshop%2F").text
    for element in ('name="username"', 'type="password" name="password"', 'type="submit"'):
        assert element in form
    assert api.get("/api/session").status_code == 401
    wrong = api.post("/login", data={"username": "ann", "password": "pw", "next": "/shop/"})
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.cookies
    right = api.post("/login", data={"username": "ann", "password": "pw 1&2", "next": "/shop/"})
    assert (right.status_code, right.headers["location"]) == (303, "/shop/")
    assert SESSION_COOKIE in right.cookies
    assert api.get("/shop/").status_code == 200
    assert "token" in api.get("/api/session").json()


def test_login_never_redirects_off_site() -> None:
    api = client(login_required=True, username="ann", password="pw")
    answer = api.post("/login", data={"username": "ann", "password": "pw", "next": "//evil"})
    assert answer.headers["location"] == "/shop/"


def test_catalogue_is_server_rendered_with_rel_next() -> None:
    api = client()
    pages = [api.get(f"/catalogue?page={n}").text for n in (1, 2, 3)]
    for number, page in enumerate(pages, start=1):
        chunk = PRODUCTS[(number - 1) * 20 : number * 20]
        assert page.count('<li class="product"') == len(chunk)
        for p in chunk:
            assert (
                f'<li class="product" data-sku="{p.sku}"><span class="name">{p.name}</span> '
                f'<span class="price">${p.price:.2f}</span></li>'
            ) in page
        has_next = f'<a rel="next" href="/catalogue?page={number + 1}">Next</a>' in page
        assert has_next == (number < 3)
    assert api.get("/catalogue").text == pages[0]
    assert api.get("/catalogue?page=4").status_code == 404
    assert api.get("/catalogue?page=0").status_code == 400


def test_stats_count_per_path_and_status() -> None:
    api = client(fail_next=1)
    api.get("/api/session")
    api.get("/api/session")
    api.get("/catalogue?page=2")
    api.get("/healthz")
    assert api.get("/__stats").json() == {
        "requests": 3,
        "per_path": {"/api/session": 2, "/catalogue": 1},
        "per_status": {"200": 2, "503": 1},
    }
    api.post("/__stats/reset")
    assert api.get("/__stats").json()["requests"] == 0


@pytest.mark.parametrize(
    "options",
    [
        {"products": -1},
        {"page_size": 0},
        {"api_version": 3},
        {"login_required": True, "username": "a"},
        {"fail_next": -1},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        create_shop_app(**options)  # type: ignore[arg-type]
