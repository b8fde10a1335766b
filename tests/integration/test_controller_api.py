"""The controller API in process (FastAPI's TestClient) against a real Redis: keys,
limits, run formats, and per-ID accounting of the workers' events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.models.run_events import RunEvent
from crawlers.services.controller.app import create_app
from crawlers.services.controller.service import Controller
from tests.servers import RedisServer

KEY = "k-0123456789"


@pytest.fixture
def api(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[TestClient]:
    config = HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_REDIS_URL": redis_server.url,
                "HYDRA_API_KEYS": f"other-key,{KEY}",
                "HYDRA_MAX_REQUEST_BYTES": 4096,
                "HYDRA_MAX_RUN_IDS": 500,
                "HYDRA_WORKER_BATCH_SIZE": 10,
                "HYDRA_DISPATCH_RATE": 1000,
            }
        )
    )
    with TestClient(create_app(config, Controller(config))) as client:
        client.headers["X-API-Key"] = KEY
        yield client


def _enqueued(client: redis.Redis) -> int:
    return int(client.llen("hydra:dispatch")) + int(client.llen("hydra:prices:batches"))


def _wait(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/runs"), ("GET", "/runs"), ("GET", "/runs/x"), ("GET", "/regions")],
)
@pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x", KEY[:-1]])
def test_every_endpoint_needs_a_valid_key(
    api: TestClient, redis_client: redis.Redis, method: str, path: str, key: str | None
) -> None:
    headers = {"X-API-Key": key} if key is not None else {}
    del api.headers["X-API-Key"]
    answer = api.request(method, path, headers=headers, json={"ids": ["1"]})
    assert answer.status_code == 401
    assert _enqueued(redis_client) == 0 and not redis_client.exists("hydra:runs")


def test_docs_are_served_without_a_key(api: TestClient) -> None:
    del api.headers["X-API-Key"]
    schema = api.get("/openapi.json").json()
    assert {"/runs", "/runs/{run_id}", "/regions"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"ids": "a, b,c,a"}), "application/json"),
        (json.dumps({"ids": ["a", "b", " c ", "b"]}), "application/json"),
        ("a,b\nc", "text/plain"),
    ],
)
def test_a_run_is_accepted_in_every_format_and_dispatched(
    api: TestClient, redis_client: redis.Redis, body: str, content_type: str
) -> None:
    answer = api.post("/runs", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 202, answer.text
    started = answer.json()
    assert (started["ids"], started["batches"]) == (3, 1)
    # the implicit default region: batches go to the plain prices queue
    raw = _wait(lambda: redis_client.lrange("hydra:prices:batches", 0, -1))
    batch = json.loads(raw[0])
    assert (batch["run_id"], batch["ids"], batch["region"]) == (
        started["run_id"],
        ["a", "b", "c"],
        "default",
    )
    run = api.get(f"/runs/{started['run_id']}").json()
    assert (run["status"], run["ids"], run["pending"]) == ("running", 3, 3)
    assert [r["run_id"] for r in api.get("/runs").json()] == [started["run_id"]]


def test_a_body_over_the_limit_is_413_and_enqueues_nothing(
    api: TestClient, redis_client: redis.Redis
) -> None:
    ids = [f"id-{n:010d}" for n in range(400)]  # a valid count, but > 4096 bytes
    assert api.post("/runs", json={"ids": ids}).status_code == 413
    chunked = api.post("/runs", content=iter([b'{"ids": ["', b"x" * 5000, b'"]}']))
    assert chunked.status_code == 413  # no Content-Length to trust: counted while read
    assert _enqueued(redis_client) == 0


def test_no_ids_and_no_warehouse_is_422(api: TestClient) -> None:
    answer = api.post("/runs")
    assert answer.status_code == 422
    assert "HYDRA_ID_SOURCE" in answer.json()["detail"]


def test_unknown_run_is_404(api: TestClient) -> None:
    assert api.get("/runs/run-nope").status_code == 404
    assert api.get("/runs/" + "x" * 300).status_code == 422


def _event(run_id: str, type_: str, ids: list[str], region: str = "default") -> dict[str, str]:
    event = RunEvent(type=type_, run_id=run_id, batch_id="b000000", region=region, ids=ids)  # type: ignore[arg-type]
    return {"event": event.model_dump_json()}


def test_events_count_each_id_once_and_finish_the_run(
    api: TestClient, redis_client: redis.Redis
) -> None:
    run_id = api.post("/runs", json={"ids": ["1", "2", "3", "4"]}).json()["run_id"]
    stream = "hydra:events"
    redis_client.xadd(stream, _event(run_id, "stored", ["1", "2"]))
    redis_client.xadd(stream, _event(run_id, "stored", ["1", "2"]))  # redelivered after a crash
    redis_client.xadd(stream, _event(run_id, "stored", ["unknown-id"]))  # not in the run
    redis_client.xadd(stream, {"event": "{not json"})  # never stops the consumer
    redis_client.xadd(stream, _event(run_id, "failed", ["3"]))
    run = _wait(lambda: (r := api.get(f"/runs/{run_id}").json())["pending"] == 1 and r)
    assert (run["status"], run["succeeded"], run["failed"]) == ("running", 2, 1)
    # a late success of a failed ID moves it; a late failure of a stored one does not
    redis_client.xadd(stream, _event(run_id, "stored", ["3", "4"]))
    redis_client.xadd(stream, _event(run_id, "failed", ["1"]))
    run = _wait(lambda: (r := api.get(f"/runs/{run_id}").json())["status"] == "finished" and r)
    assert (run["succeeded"], run["failed"], run["pending"]) == (4, 0, 0)
    assert run["regions"]["default"]["stored"] == 4
    _wait(lambda: redis_client.xpending(stream, "hydra-controller")["pending"] == 0)  # all acked
    assert api.get(f"/runs/{run_id}").json()["succeeded"] == 4  # the late failure changed nothing


def test_the_default_region_is_never_quarantined(
    api: TestClient, redis_client: redis.Redis
) -> None:
    run_id = api.post("/runs", json={"ids": ["1"]}).json()["run_id"]
    redis_client.xadd("hydra:events", _event(run_id, "stopped", []))
    region = _wait(lambda: (r := api.get("/regions").json()[0])["batches_stopped"] == 1 and r)
    assert (region["name"], region["state"]) == ("default", "active")


_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=20,
    ).map(lambda value: json.dumps({"ids": value}).encode()),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=_bodies, content_type=st.sampled_from(["application/json", "text/plain", "", "image/png"])
)
def test_fuzzed_bodies_never_cause_a_500(api: TestClient, body: bytes, content_type: str) -> None:
    answer = api.post("/runs", content=body, headers={"Content-Type": content_type})
    assert answer.status_code in (202, 413, 422), (answer.status_code, answer.text)
    if answer.status_code == 422:
        assert isinstance(answer.json()["detail"], str | list)


def test_a_run_without_ids_takes_every_id_of_the_warehouse(
    redis_server: RedisServer, redis_client: redis.Redis, bigquery_emulator: Any
) -> None:
    import uuid

    bq = bigquery_emulator.client()
    table = f"{bigquery_emulator.project}.ids_{uuid.uuid4().hex[:8]}.catalog"
    bq.create_dataset(table.rsplit(".", 1)[0])
    bq.query(
        f"CREATE TABLE `{table}` AS SELECT CAST(n AS STRING) AS tcg_id "
        "FROM UNNEST(GENERATE_ARRAY(1, 2500)) AS n"
    ).result()
    bq.close()
    config = HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_REDIS_URL": redis_server.url,
                "HYDRA_API_KEYS": KEY,
                "HYDRA_ID_SOURCE": f"bigquery://{table.replace('.', '/', 1)}?column=tcg_id",
                "HYDRA_BIGQUERY_ENDPOINT": bigquery_emulator.endpoint,
            }
        )
    )
    with TestClient(create_app(config, Controller(config))) as client:
        answer = client.post("/runs", headers={"X-API-Key": KEY})
        assert answer.status_code == 202, answer.text
        assert (answer.json()["ids"], answer.json()["batches"]) == (2500, 25)
        run_id = answer.json()["run_id"]
        _wait(lambda: redis_client.llen("hydra:prices:batches") == 25)
    ids = set()
    for raw in redis_client.lrange("hydra:prices:batches", 0, -1):
        batch = json.loads(raw)
        assert batch["run_id"] == run_id
        ids.update(batch["ids"])
    assert ids == {str(n) for n in range(1, 2501)}
