"""Seed 000 end to end: controller API -> dispatcher -> regional workers -> BigQuery
(the emulator), with regions blocked midway and replaced by their neighbours."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from google.cloud import bigquery

from crawlers.sandbox import SandboxServer
from crawlers.sandbox.region_proxy import RegionProxies
from tests.bqfixtures import PROJECT, BigQueryEmulator
from tests.hydra import ControllerProcess, regions_json, ring
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

NAMES = ["north", "east", "south", "west"]
IDS = [f"tcg-{n:05d}" for n in range(2000)]


@pytest.fixture
def warehouse(bigquery_emulator: BigQueryEmulator) -> Iterator[tuple[bigquery.Client, str]]:
    client = bigquery_emulator.client()
    dataset = f"hydra_{uuid.uuid4().hex[:10]}"
    client.create_dataset(f"{PROJECT}.{dataset}")
    yield client, f"{PROJECT}.{dataset}.prices"
    client.close()  # type: ignore[no-untyped-call]


def _regions(proxies: RegionProxies, start: list[str]) -> str:
    regions = ring(NAMES)
    for region in regions:
        region["egress"] = proxies.egress(region["name"])
        region["start"] = region["name"] in start
    return regions_json(regions)


def _warehouse_ids(client: bigquery.Client, table: str) -> list[str]:
    return [row["id"] for row in client.query(f"SELECT id FROM `{table}`").result()]


def _run_hydra(
    tmp_path: Path,
    redis_url: str,
    emulator: BigQueryEmulator,
    table: str,
    during: Any = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, int]]:
    project, dataset, name = table.split(".")
    with (
        SandboxServer(block_regions={"north": 300, "east": 500}, delay_seconds=0.002) as sandbox,
        RegionProxies(NAMES) as proxies,
        ControllerProcess(
            tmp_path,
            redis_url,
            HYDRA_REGIONS=_regions(proxies, ["north", "east"]),
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_SINKS=f"bigquery://{project}/{dataset}.{name}",
            HYDRA_BIGQUERY_ENDPOINT=emulator.endpoint,
            HYDRA_WORKER_BATCH_SIZE=50,
            HYDRA_REGION_COOLDOWN_SECONDS=600,
        ) as controller,
    ):
        answer = controller.call("POST", "/runs", json={"ids": IDS})
        assert answer.status_code == 202, answer.text
        started = answer.json()
        assert (started["ids"], started["batches"]) == (2000, 40)
        if during is not None:
            during(controller, started["run_id"])
        run = controller.wait_finished(started["run_id"], timeout=240)
        regions = {r["name"]: r for r in controller.call("GET", "/regions").json()}
        return run, regions, sandbox.stats()["per_region"]


def _assert_every_id_once(run: dict[str, Any], client: bigquery.Client, table: str) -> None:
    assert (run["succeeded"], run["failed"], run["pending"]) == (2000, 0, 0), run
    assert sum(r["stored"] for r in run["regions"].values()) == 2000
    rows = _warehouse_ids(client, table)
    assert sorted(set(rows)) == IDS  # every ID in BigQuery ...
    assert len(rows) == len(IDS), len(rows) - len(IDS)  # ... exactly once


def test_blocked_regions_are_replaced_and_every_id_is_stored_once(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    bigquery_emulator: BigQueryEmulator,
    warehouse: tuple[bigquery.Client, str],
) -> None:
    client, table = warehouse
    run, regions, per_region = _run_hydra(tmp_path, redis_server.url, bigquery_emulator, table)
    _assert_every_id_once(run, client, table)
    # the blocked regions were quarantined and their workers stopped
    for name in ("north", "east"):
        assert regions[name]["state"] == "quarantined", regions[name]
        assert regions[name]["batches_stopped"] >= 1
        assert regions[name]["worker"] is None and regions[name]["stopped_workers"]
    # north's neighbours (east is busy, so south and west) grew in its place and did the rest
    for name in ("south", "west"):
        assert regions[name]["state"] == "active" and regions[name]["worker"] is not None
    assert per_region["south"] > 0 and per_region["west"] > 0
    stopped = [
        json.loads(fields["event"])
        for _, fields in redis_client.xrange("hydra:events")
        if json.loads(fields["event"])["type"] == "stopped"
    ]
    assert {event["region"] for event in stopped} >= {"north", "east"}


def test_a_sigkilled_regional_worker_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    bigquery_emulator: BigQueryEmulator,
    warehouse: tuple[bigquery.Client, str],
) -> None:
    client, table = warehouse
    killed: list[int] = []

    def kill_a_worker_midway(controller: ControllerProcess, run_id: str) -> None:
        deadline = time.monotonic() + 60
        while controller.call("GET", f"/runs/{run_id}").json()["succeeded"] < 150:
            assert time.monotonic() < deadline, controller.log()
            time.sleep(0.05)
        while not killed:  # a worker the controller has just replaced may be gone already
            regions = controller.call("GET", "/regions").json()
            victim = next(r for r in regions if r["state"] == "active" and r["worker"])
            try:
                os.kill(victim["worker"]["pid"], signal.SIGKILL)
            except ProcessLookupError:
                assert time.monotonic() < deadline, controller.log()
                time.sleep(0.2)
                continue
            killed.append(victim["worker"]["pid"])

    run, regions, _ = _run_hydra(
        tmp_path, redis_server.url, bigquery_emulator, table, during=kill_a_worker_midway
    )
    assert killed
    _assert_every_id_once(run, client, table)
    pids = [r["worker"]["pid"] for r in regions.values() if r["worker"]]
    assert killed[0] not in pids  # the dead worker was replaced, not counted as alive
