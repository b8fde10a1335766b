"""Capturing the sandbox shop in real Chromium (Debian's, STACK-NOTES): what the
browser renders, what the HAR records, and that login credentials never stay in it.

One browser serves the module (on one event loop); :func:`capture`, which launches
its own, runs only where its redaction is under test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import pytest
from playwright.async_api import Browser, Playwright, async_playwright
from pydantic import SecretStr

from crawlers.fetchers.capture import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    Exploration,
    LoginError,
    capture,
    explore,
    recording_context,
    redact_har,
)
from crawlers.models.fetch_task import LoginCredentials
from crawlers.sandbox.shop import catalogue
from crawlers.sandbox.shop_server import ShopServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM_PATH).exists(), reason="needs Debian's chromium"),
]

PRODUCTS = catalogue()
NAMES = [p.name for p in PRODUCTS]
USERNAME = "shop.user+1@example.com"
PASSWORD = 'p@ss w0rd!&"é/%'


@dataclass
class Browsing:
    loop: asyncio.AbstractEventLoop
    browser: Browser


@dataclass
class Captured:
    har: dict[str, Any]
    exploration: Exploration


@pytest.fixture(scope="module")
def browsing() -> Iterator[Browsing]:
    loop = asyncio.new_event_loop()
    playwright: Playwright = loop.run_until_complete(async_playwright().start())
    try:
        browser = loop.run_until_complete(
            playwright.chromium.launch(
                executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS)
            )
        )
        yield Browsing(loop, browser)
        loop.run_until_complete(browser.close())
    finally:
        loop.run_until_complete(playwright.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(scope="module")
def shop() -> Iterator[ShopServer]:
    with ShopServer() as server:
        yield server


def record(browsing: Browsing, url: str, out_dir: Path, **options: Any) -> Captured:
    """Explore ``url`` in a fresh recording context of the module's browser."""
    har_path = out_dir / "capture.har"

    async def run() -> Exploration:
        context = await recording_context(browsing.browser, har_path)
        try:
            page = await context.new_page()
            return await explore(
                page,
                url,
                login=options.pop("login", None),
                navigation=options.pop("navigation", {}),
                screenshots_dir=out_dir / "screenshots",
                **options,
            )
        finally:
            await context.close()

    exploration = browsing.loop.run_until_complete(run())
    return Captured(json.loads(har_path.read_text(encoding="utf-8")), exploration)


def entries(har: dict[str, Any], path: str) -> list[dict[str, Any]]:
    return [e for e in har["log"]["entries"] if urlsplit(e["request"]["url"]).path == path]


def header(entry: dict[str, Any], name: str) -> str | None:
    found = [h["value"] for h in entry["request"]["headers"] if h["name"].lower() == name]
    return found[0] if found else None


def all_names_shown(exploration: Exploration) -> bool:
    text = "\n".join(exploration.page_texts)
    return all(name in text for name in NAMES)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


@pytest.fixture(scope="module")
def shop_capture(
    browsing: Browsing, shop: ShopServer, tmp_path_factory: pytest.TempPathFactory
) -> Captured:
    shop.reset_stats()
    return record(browsing, shop.shop_url, tmp_path_factory.mktemp("shop"))


def test_js_shop_renders_every_product_across_three_pages(
    shop: ShopServer, shop_capture: Captured
) -> None:
    exploration = shop_capture.exploration
    assert exploration.pages_visited == 3
    assert (exploration.final_url, exploration.login_used) == (shop.shop_url, False)
    assert all_names_shown(exploration)
    for number, text in enumerate(exploration.page_texts):
        shown = [p for p in PRODUCTS if p.name in text]
        assert shown == PRODUCTS[number * 20 : (number + 1) * 20]  # one page per state
        assert all(f"${p.price:.2f}" in text and p.sku in text for p in shown)
    assert len(exploration.screenshots) == 3
    assert all(shot.read_bytes().startswith(b"\x89PNG") for shot in exploration.screenshots)
    # the browser stopped at the last page: "Next" hidden, not clicked once more
    assert shop.stats()["per_path"]["/api/v1/products"] == 3


def test_har_holds_the_token_and_the_pages_with_their_json(shop_capture: Captured) -> None:
    har = shop_capture.har
    (session,) = entries(har, "/api/session")
    content = session["response"]["content"]
    assert content["mimeType"].startswith("application/json") and "encoding" not in content
    token = json.loads(content["text"])["token"]
    pages = entries(har, "/api/v1/products")
    assert [e["request"]["url"].split("?")[1] for e in pages] == [
        f"page={n}&per_page=20" for n in (1, 2, 3)
    ]
    products = []
    for entry in pages:
        assert entry["request"]["method"] == "GET" and entry["response"]["status"] == 200
        assert header(entry, "authorization") == f"Bearer {token}"
        assert {"name": "page", "value": entry["request"]["url"][-13]} in entry["request"][
            "queryString"
        ]
        body = json.loads(entry["response"]["content"]["text"])
        products += [p["name"] for p in body["products"]]
    assert products == NAMES
    # the noise is there too, for the analysis to ignore
    beacons = entries(har, "/analytics/collect")
    assert len(beacons) == 3 and {e["response"]["status"] for e in beacons} == {204}
    assert beacons[0]["request"]["postData"]["text"].startswith('{"event":"page_view"')
    assert len(entries(har, "/static/app.css")) == 1
    assert len(entries(har, "/api/config")) == 1


def test_catalogue_is_followed_by_its_rel_next_links(
    browsing: Browsing, shop: ShopServer, tmp_path: Path
) -> None:
    navigation = {"filters": ["sports", "news"], "date_range": "7_days"}  # none offered
    captured = record(browsing, shop.catalogue_url, tmp_path, navigation=navigation)
    exploration = captured.exploration
    assert exploration.pages_visited == 3
    assert exploration.final_url == shop.base_url + "/catalogue?page=3"
    assert exploration.navigation_applied == []
    assert all_names_shown(exploration)
    documents = [
        e["request"]["url"].removeprefix(shop.base_url)
        for e in captured.har["log"]["entries"]
        if e["response"]["content"]["mimeType"].startswith("text/html")
    ]
    assert documents == ["/catalogue", "/catalogue?page=2", "/catalogue?page=3"]
    assert not [e for e in captured.har["log"]["entries"] if "/api/" in e["request"]["url"]]


def test_v2_moves_the_data_and_v1_answers_410(
    browsing: Browsing, shop: ShopServer, tmp_path: Path
) -> None:
    shop.set_api_version(2)
    try:
        captured = record(browsing, shop.shop_url, tmp_path)
        (session,) = entries(captured.har, "/api/session")
        token = json.loads(session["response"]["content"]["text"])["token"]
        status, _ = get(
            shop.base_url + "/api/v1/products?page=1", {"Authorization": f"Bearer {token}"}
        )
        assert status == 410
    finally:
        shop.set_api_version(1)
    assert captured.exploration.pages_visited == 3
    assert all_names_shown(captured.exploration)
    assert not entries(captured.har, "/api/v1/products")
    pages = entries(captured.har, "/api/v2/catalog/items")
    queries = [e["request"]["url"].split("?")[1] for e in pages]
    assert queries[0] == "limit=20"
    assert [q.startswith("cursor=") and q.endswith("&limit=20") for q in queries[1:]] == [1, 1]
    bodies = [json.loads(e["response"]["content"]["text"]) for e in pages]
    assert [i["title"] for b in bodies for i in b["data"]["items"]] == NAMES
    assert [b["next_cursor"] is None for b in bodies] == [False, False, True]
    assert all(header(e, "authorization") == f"Bearer {token}" for e in pages)


def test_fail_next_gives_503_then_the_page_recovers(
    browsing: Browsing, shop: ShopServer, tmp_path: Path
) -> None:
    shop.reset_stats()
    shop.fail_next(2)
    captured = record(browsing, shop.shop_url, tmp_path)
    assert all_names_shown(captured.exploration)
    statuses = [e["response"]["status"] for e in entries(captured.har, "/api/session")]
    assert statuses == [503, 503, 200]  # the page's script retried
    assert shop.stats()["per_status"]["503"] == 2
    shop.fail_next(1)
    assert get(shop.base_url + "/api/session")[0] == 503
    assert get(shop.base_url + "/api/session")[0] == 200


def test_navigation_values_are_clicked_or_selected_when_offered(
    browsing: Browsing, tmp_path: Path
) -> None:
    page = (
        "<select id=range onchange=\"document.getElementById('s').textContent+=' range'\">"
        "<option value=1>Last day</option><option value=7>Last 7 days</option></select>"
        "<button onclick=\"document.getElementById('s').textContent+=' sports'\">Sports</button>"
        "<button>Newsletter</button><p id=s>chosen:</p>"
    )
    navigation = {"date_range": "7_days", "filters": ["sports", "news"], "other": 1}
    captured = record(browsing, "data:text/html," + quote(page), tmp_path, navigation=navigation)
    exploration = captured.exploration
    assert exploration.navigation_applied == ["7_days", "sports"]  # "news" is no word there
    assert "chosen: range sports" in exploration.page_texts[0]
    assert exploration.pages_visited == 1


def secret_forms(secret: str) -> list[bytes]:
    """The ways a secret may be stored in a HAR: raw, JSON-escaped, URL- and form-encoded."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        quote_plus(secret, safe="*"),
    }
    return [form.encode() for form in forms]


@pytest.fixture(scope="module")
def login_shop() -> Iterator[ShopServer]:
    with ShopServer(login_required=True, username=USERNAME, password=PASSWORD) as server:
        yield server


def test_login_variant_logs_in_and_the_har_keeps_no_credentials(
    login_shop: ShopServer, tmp_path: Path
) -> None:
    login = LoginCredentials(username=USERNAME, password=SecretStr(PASSWORD))
    har_path, exploration = asyncio.run(
        capture(login_shop.shop_url, login=login, navigation={}, out_dir=tmp_path)
    )
    assert har_path == tmp_path / "capture.har"
    assert exploration.login_used
    assert exploration.pages_visited == 3 and all_names_shown(exploration)
    assert exploration.final_url == login_shop.shop_url
    raw = har_path.read_bytes()
    for form in secret_forms(USERNAME) + secret_forms(PASSWORD):
        assert form not in raw
    assert not [t for t in exploration.page_texts if USERNAME in t or PASSWORD in t]
    har = json.loads(raw)
    (login_post,) = [e for e in entries(har, "/login") if e["request"]["method"] == "POST"]
    assert login_post["request"]["postData"]["text"] == "next=%2Fshop%2F&username=***&password=***"
    assert len(entries(har, "/api/v1/products")) == 3  # what the analysis needs is intact


def test_a_failed_login_raises_and_its_har_is_redacted_too(
    login_shop: ShopServer, tmp_path: Path
) -> None:
    wrong = "not-" + PASSWORD
    login = LoginCredentials(username=USERNAME, password=SecretStr(wrong))
    with pytest.raises(LoginError) as raised:
        asyncio.run(capture(login_shop.shop_url, login=login, navigation={}, out_dir=tmp_path))
    assert wrong not in str(raised.value) and USERNAME not in str(raised.value)
    raw = (tmp_path / "capture.har").read_bytes()
    assert b"/login" in raw
    for form in secret_forms(USERNAME) + secret_forms(wrong):
        assert form not in raw


def test_redact_har_masks_every_encoding_and_keeps_the_json(tmp_path: Path) -> None:
    secret = 'Ünïcode pw&"\\/+%😀'
    body = json.dumps({"password": secret}).encode()
    har = {
        "log": {
            "entries": [
                {
                    "request": {
                        "url": "https://x.test/?pw=" + quote(secret, safe="").lower(),
                        "postData": {"text": "pw=" + quote_plus(secret), "params": []},
                        "headers": [{"name": "X-Pw", "value": secret}],
                    },
                    "response": {
                        "content": {"text": json.dumps({"echo": secret}), "size": 1},
                        "binary": {"encoding": "base64", "text": base64.b64encode(body).decode()},
                        "html": {"text": "Hello &quot;" + secret.replace("&", "&amp;")},
                    },
                }
            ]
        }
    }
    path = tmp_path / "x.har"
    path.write_text(json.dumps(har), encoding="utf-8")
    assert redact_har(path, [secret, ""]) == 6
    redacted = json.loads(path.read_text(encoding="utf-8"))
    entry = redacted["log"]["entries"][0]
    assert entry["request"]["url"] == "https://x.test/?pw=***"
    assert entry["request"]["postData"]["text"] == "pw=***"
    assert json.loads(entry["response"]["content"]["text"]) == {"echo": "***"}
    decoded = base64.b64decode(entry["response"]["binary"]["text"])
    assert json.loads(decoded) == {"password": "***"}
    assert entry["response"]["html"]["text"] == "Hello &quot;***"
    assert redact_har(path, [secret]) == 0
