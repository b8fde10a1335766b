"""Tests of the sandbox price API, through a real subprocess and real HTTP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from crawlers.sandbox import SandboxServer


def post(url: str) -> tuple[int, dict[str, str], Any]:
    """POST with an empty body; HTTP errors are answers here, not exceptions."""
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), json.loads(err.read())


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(fail_ids=frozenset({"13", "14"})) as server:
        yield server


@pytest.fixture
def fresh(sandbox: SandboxServer) -> SandboxServer:
    sandbox.reset_stats()
    return sandbox


def test_price_ok_and_deterministic(fresh: SandboxServer) -> None:
    url = fresh.url_template.format(id="abc")
    status, headers, body = post(url)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert set(body) == {"id", "price", "currency", "updated_at"}
    assert body["id"] == "abc"
    assert body["currency"] == "USD"
    assert 1.0 <= body["price"] <= 500.0
    assert round(body["price"], 2) == body["price"]
    assert datetime.fromisoformat(body["updated_at"]).utcoffset() is not None
    assert post(url)[2]["price"] == body["price"]
    assert post(fresh.url_template.format(id="abd"))[2]["price"] != body["price"]


def test_price_is_the_same_across_processes(fresh: SandboxServer) -> None:
    first = post(fresh.url_template.format(id="xyz"))[2]["price"]
    with SandboxServer(seed=99) as other:
        assert post(other.url_template.format(id="xyz"))[2]["price"] == first


def test_fail_ids_get_503(fresh: SandboxServer) -> None:
    status, _, body = post(fresh.url_template.format(id="13"))
    assert (status, body) == (503, {"error": "unavailable"})
    assert fresh.stats()["failed"] == 1


def test_stats_count_per_id_and_reset(fresh: SandboxServer) -> None:
    for price_id in ("a", "a", "b", "14"):
        post(fresh.url_template.format(id=price_id))
    assert fresh.stats() == {
        "requests": 4,
        "refused": 0,
        "failed": 1,
        "per_id": {"a": 2, "b": 1, "14": 1},
        "per_region": {},
    }
    fresh.reset_stats()
    assert fresh.stats() == {
        "requests": 0, "refused": 0, "failed": 0, "per_id": {}, "per_region": {}
    }  # fmt: skip


def test_a_region_is_banned_after_its_allowance_and_only_it() -> None:
    from crawlers.sandbox.region_proxy import RegionProxies

    with SandboxServer(block_regions={"eu": 2}) as server, RegionProxies(["eu", "us"]) as proxies:

        def through(region: str, price_id: str) -> int:
            handler = urllib.request.ProxyHandler({"http": proxies.egress(region)})
            request = urllib.request.Request(
                server.url_template.format(id=price_id), data=b"", method="POST"
            )
            try:
                with urllib.request.build_opener(handler).open(request, timeout=5) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as error:
                with error:
                    return int(error.code)

        assert [through("eu", str(n)) for n in range(4)] == [200, 200, 403, 403]
        assert [through("us", str(n)) for n in range(3)] == [200, 200, 200]
        assert post(server.url_template.format(id="direct"))[0] == 200  # no region: never banned
        assert server.stats()["per_region"] == {"eu": 4, "us": 3, "": 1}
        assert (proxies.requests("eu"), proxies.requests("us")) == (4, 3)


def test_refuse_rate_one_gives_429() -> None:
    with SandboxServer(refuse_rate=1.0) as server:
        status, headers, body = post(server.url_template.format(id="1"))
        assert status == 429
        assert headers["retry-after"] == "1"
        assert body == {"error": "rate limited"}
        assert server.stats()["refused"] == 1


def test_refusals_are_reproducible_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with SandboxServer(refuse_rate=0.5, seed=seed) as server:
            return [post(server.url_template.format(id=str(i)))[0] for i in range(40)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 429} == set(first)


def test_healthz(sandbox: SandboxServer) -> None:
    with urllib.request.urlopen(sandbox.base_url + "/healthz", timeout=5.0) as resp:
        assert json.loads(resp.read()) == {"ok": True}
    assert sandbox.base_url == f"http://127.0.0.1:{sandbox.port}"


def test_start_failure_raises_with_stderr() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = SandboxServer(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="sandbox exited"):
            server.__enter__()
