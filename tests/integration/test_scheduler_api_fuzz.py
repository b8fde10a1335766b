"""Fuzzes the scheduler's API from its own OpenAPI schema (schemathesis, property-based,
in process over ASGI), and checks that every mutating operation needs an operator key.

The app is backed by a real SQLite state database and a scheduler whose ticks do
nothing: fuzzed task configs are stored and triggered jobs queued, but no spider is
ever launched. A few tasks and a job are seeded so that generated names hit real rows
(Hypothesis tries short names such as ``0`` first). Each operation gets a bounded
Hypothesis run of its own (schemathesis' pytest plugin cannot load a schema from a
fixture under pytest 9: it sets ``Function._nodeid``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from scrapy.settings import Settings

from crawlers.config import HydraConfig
from crawlers.db.state import StateDB
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.secrets import generate_key
from crawlers.services.scheduler.service import Scheduler
from crawlers.services.scheduler.triggers import FakeClock

pytestmark = pytest.mark.integration
OPERATOR, READER = "op-key-fuzz", "ro-key-fuzz"
SECRET = "fuzz-secret-81kd"
SEEDED_TASKS = ("0", "a", "seeded")
EXAMPLES = 25  # per operation and mode
#: not negative_data_rejection: the API ignores query parameters it does not know (which
#: schemathesis counts as invalid data), and every call carries the operator key (which
#: negative cases may have left out)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class IdleScheduler(Scheduler):
    """Stores configs and jobs, and never runs one: its ticks do nothing."""

    async def tick(self) -> None:
        return None


def _config(tmp_path: Path) -> HydraConfig:
    return HydraConfig.from_settings(
        Settings(
            {
                "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
                "HYDRA_API_KEYS": OPERATOR,
                "HYDRA_READONLY_API_KEYS": READER,
                "HYDRA_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
                "HYDRA_SCHEDULER_SECRET_KEY": generate_key(),
                "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
            }
        )
    )


def _app(tmp_path: Path) -> FastAPI:
    config = _config(tmp_path)
    return create_app(config, IdleScheduler(config, StateDB(config.db_url)))


def _task(**fields: Any) -> dict[str, Any]:
    return {
        "spider": "prices",
        "args": {"ids": "1,2", "token": {"secret": SECRET}},
        "schedule": {"trigger": "external"},
        "retry": {"max_retries": 2},
        "alerts": [{"webhook": {"secret": f"https://hooks.example/{SECRET}"}}],
        **fields,
    }


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    """The app; schemathesis starts its lifespan (the scheduler) at its first request and
    keeps it running until ``shutdown_lifespans``."""
    app = _app(tmp_path)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()


def _seed(app: FastAPI) -> None:
    with asgi.get_client(app) as client:
        client.headers["X-API-Key"] = OPERATOR
        for name in SEEDED_TASKS:
            assert client.put(f"/tasks/{name}", json=_task()).status_code == 200
        assert client.post("/tasks/seeded/trigger").status_code == 202


def _fuzz(operation: APIOperation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis/ folder in the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers={"X-API-Key": OPERATOR}, checks=CHECKS)
        assert SECRET not in response.text

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_server_error_or_off_schema(
    app: FastAPI, subtests: pytest.Subtests, mode: GenerationMode
) -> None:
    """Data that fits the schema and data that does not, for every operation: never a
    5xx, every answer's status, content type and body as documented, no secret shown."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    _seed(app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        with subtests.test(operation=operation.label):
            _fuzz(operation, mode)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app(tmp_path)) as client:
        client.headers["X-API-Key"] = OPERATOR
        yield client


def _mutating_operations(api: TestClient) -> list[tuple[str, str]]:
    """``(method, path)`` of every operation but the reads, path parameters filled with
    a task and a job that exist (so that only the key can refuse the request)."""
    assert api.put("/tasks/t1", json=_task()).status_code == 200
    job_id = api.post("/tasks/t1/trigger").json()["job_id"]
    values = {"name": "t1", "job_id": job_id}
    operations = []
    for path, methods in api.get("/openapi.json").json()["paths"].items():
        for method in methods:
            if method.upper() not in ("GET", "HEAD", "OPTIONS"):
                operations.append((method.upper(), path.format(**values)))
    return operations


def test_mutating_operations_need_an_operator_key(api: TestClient) -> None:
    operations = _mutating_operations(api)
    assert {(method, path.replace("t1", "{name}")) for method, path in operations} >= {
        ("PUT", "/tasks/{name}"),
        ("DELETE", "/tasks/{name}"),
        ("POST", "/tasks/{name}/pause"),
        ("POST", "/tasks/{name}/resume"),
        ("POST", "/tasks/{name}/trigger"),
    }
    assert any(path.endswith("/cancel") for _, path in operations)
    before = api.get("/jobs").json(), api.get("/tasks").json(), api.get("/tasks/t1/history").json()
    body = _task(description="changed")
    for method, path in operations:
        for headers, status in (
            ({}, 401),
            ({"X-API-Key": "wrong"}, 401),
            ({"X-API-Key": READER}, 403),
        ):
            api.headers.pop("X-API-Key")
            answer = api.request(method, path, json=body, headers=headers)
            api.headers["X-API-Key"] = OPERATOR
            assert answer.status_code == status, (method, path, headers, answer.text)
    # nothing changed: no job, config version, pause or deletion
    after = api.get("/jobs").json(), api.get("/tasks").json(), api.get("/tasks/t1/history").json()
    assert after == before
    # and the reads are the read-only key's
    assert api.get("/tasks", headers={"X-API-Key": READER}).status_code == 200
    assert api.get("/tasks", headers={"X-API-Key": ""}).status_code == 401


def test_a_job_id_beyond_the_database_range_is_refused_not_a_server_error(
    api: TestClient,
) -> None:
    # found by the fuzzer: SQLite cannot bind 2**63 (OverflowError, a 500)
    refused = api.get("/jobs", params={"before": 2**63})
    assert refused.status_code == 422 and "before" in refused.text
    assert api.get("/jobs", params={"before": 2**63 - 1}).status_code == 200


def test_pause_and_delete_through_the_api_reach_the_engine_at_once(tmp_path: Path) -> None:
    """The engine fires from its in-memory configs: the API's pause and delete must
    update them (not only the database, which the engine compares with every 30 s)."""
    config = _config(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    scheduler = Scheduler(config, StateDB(config.db_url), clock=clock)
    # every minute; a job cannot start (its env secret is unset): fires cost no crawl
    body = {
        "spider": "prices",
        "args": {"token": {"env": "FUZZ_SECRET_UNSET"}},
        "schedule": {"every": "60s"},
    }
    with TestClient(create_app(config, scheduler)) as api:
        api.headers["X-API-Key"] = OPERATOR
        for name in ("kept", "paused", "deleted"):
            assert api.put(f"/tasks/{name}", json=body).status_code == 200
        assert api.post("/tasks/paused/pause").status_code == 200
        assert api.delete("/tasks/deleted").status_code == 200
        clock.advance(120)  # all three are due in the same tick
        deadline = time.monotonic() + 10
        while not api.get("/jobs", params={"task": "kept"}).json():
            assert time.monotonic() < deadline, "the kept task never fired"
            time.sleep(0.1)
        assert api.get("/jobs", params={"task": "paused"}).json() == []
        assert api.get("/jobs", params={"task": "deleted"}).json() == []
