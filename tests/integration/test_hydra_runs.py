"""Seed 000 end to end: controller API -> dispatcher -> regional workers -> sink, with
regions that get blocked midway and are replaced by their neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from crawlers.sandbox import SandboxServer
from crawlers.sandbox.region_proxy import RegionProxies
from tests.hydra import ControllerProcess, regions_json, ring, stored_ids
from tests.servers import RedisServer

NAMES = ["north", "east", "south", "west"]


def _regions(proxies: RegionProxies, start: list[str]) -> str:
    regions = ring(NAMES)
    for region in regions:
        region["egress"] = proxies.egress(region["name"])
        region["start"] = region["name"] in start
    return regions_json(regions)


def test_blocked_regions_are_replaced_and_every_id_is_stored_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    ids = [f"tcg-{n:05d}" for n in range(2000)]
    blocks = {"north": 300, "east": 500}
    with (
        SandboxServer(block_regions=blocks, delay_seconds=0.002) as sandbox,
        RegionProxies(NAMES) as proxies,
        ControllerProcess(
            tmp_path,
            redis_server.url,
            HYDRA_REGIONS=_regions(proxies, ["north", "east"]),
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_SINKS=f"jsonl://{tmp_path}/rows.jsonl",
            HYDRA_WORKER_BATCH_SIZE=50,
            HYDRA_REGION_COOLDOWN_SECONDS=600,
        ) as controller,
    ):
        answer = controller.call("POST", "/runs", json={"ids": ids})
        assert answer.status_code == 202, answer.text
        started = answer.json()
        assert (started["ids"], started["batches"]) == (2000, 40)
        run = controller.wait_finished(started["run_id"], timeout=240)
        regions = {r["name"]: r for r in controller.call("GET", "/regions").json()}
        per_region = sandbox.stats()["per_region"]
    assert (run["succeeded"], run["failed"], run["pending"]) == (2000, 0, 0), run
    rows = stored_ids(tmp_path)
    assert sorted(set(rows)) == ids  # every ID stored ...
    assert len(rows) == len(ids), len(rows) - len(ids)  # ... exactly once
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
    assert sum(r["stored"] for r in run["regions"].values()) == 2000
