"""``make demo``, seed 000: the whole hydra on this machine, with no cloud account.

A private redis-server, the sandbox price API, four sandbox regions (forward
proxies on loopback, each stamping its name), and ``scrapy controller``, which
launches the workers of the two starting regions. A run of a few thousand IDs
goes in through the API; midway the sandbox starts refusing one region (as a
site bans an IP range): its batch stops, the controller quarantines it, stops
its worker, starts its two free neighbours and moves its batches to them. The
summary accounts for every ID and says where the rows are.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from crawlers.sandbox import SandboxServer
from crawlers.sandbox.redis_server import RedisServer
from crawlers.sandbox.region_proxy import RegionProxies
from crawlers.sandbox.server import _free_port

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ["eu-west", "eu-north", "us-east", "ap-south"]
BLOCKED, BLOCK_AFTER = "eu-west", 700


def run_hydra_demo(ids: int, output: Path) -> int:
    output = output / "hydra"
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("*"):
        old.unlink()
    asked = [f"tcg-{number:05d}" for number in range(1, ids + 1)]
    key = secrets.token_urlsafe(16)
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    print("\n==== Seed 000: the hydra (controller, dispatcher, four regions) ====")
    with (
        tempfile.TemporaryDirectory(prefix="hydra-demo-redis-") as redis_dir,
        SandboxServer(block_regions={BLOCKED: BLOCK_AFTER}, delay_seconds=0.002) as sandbox,
        RegionProxies(REGIONS) as proxies,
    ):
        redis_server = RedisServer(Path(redis_dir)).start()
        regions = [
            {
                "name": name,
                "egress": proxies.egress(name),
                # the two regions across the ring: both free when a starting one falls
                "neighbours": [REGIONS[(i + 2) % 4], REGIONS[(i + 3) % 4]],
                "start": i < 2,
            }
            for i, name in enumerate(REGIONS)
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
        env.update(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_API_KEYS=key,
            HYDRA_CONTROLLER_BIND=f"127.0.0.1:{port}",
            HYDRA_REGIONS=json.dumps(regions),
            HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
            HYDRA_SINKS=f"jsonl://{output.resolve()}/prices.jsonl",
            HYDRA_DEADLETTER_KEY="hydra:deadletter",
            HYDRA_WORKER_BATCH_SIZE="50",
            HYDRA_QUEUE_LEASE_SECONDS="5",
            HYDRA_ACK_INTERVAL_SECONDS="0.2",
            HYDRA_RETRY_DELAY_SECONDS="0.2",
            HYDRA_REGION_COOLDOWN_SECONDS="600",
            HYDRA_DISPATCH_RATE="200",
        )
        log_path = output / "controller.log"
        print(f"Sandbox price API {sandbox.base_url}; bans {BLOCKED} after {BLOCK_AFTER} requests")
        print(f"Regions: {', '.join(REGIONS)} (proxies on loopback); controller on {api}")
        print(f"Controller log: {log_path}")
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "scrapy", "controller"]
            controller = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            return _drive(api, key, asked, output, controller)
        finally:
            controller.terminate()
            try:
                controller.wait(90)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait()
            redis_server.stop()


def _drive(
    api: str, key: str, asked: list[str], output: Path, controller: subprocess.Popen[bytes]
) -> int:
    headers = {"X-API-Key": key}
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{api}/openapi.json", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if controller.poll() is not None or time.monotonic() > deadline:
                print(f"The controller did not start; see {output / 'controller.log'}")
                return 1
            time.sleep(0.2)
    refused = httpx.post(f"{api}/runs", json={"ids": asked[:3]}, timeout=10)
    print(f"POST /runs without a key: {refused.status_code}")
    started = httpx.post(f"{api}/runs", json={"ids": asked}, headers=headers, timeout=60).json()
    print(f"POST /runs: {started['run_id']}: {started['ids']} IDs in {started['batches']} batches")
    run: dict[str, Any] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/runs/{started['run_id']}", headers=headers, timeout=10).json()
        active = [r["name"] for r in _regions(api, headers) if r["state"] == "active"]
        print(
            f"  {run['succeeded']:5d} stored, {run['failed']} failed, {run['pending']:5d} "
            f"pending; active: {', '.join(active)}"
        )
        if run["status"] == "finished":
            break
        time.sleep(1.0)
    regions = _regions(api, headers)
    print("\n==== Hydra run summary ====")
    print(
        f"{'region':10} {'state':12} {'batches done':>12} {'stopped':>8} {'IDs stored':>10}  worker"
    )
    for region in regions:
        worker = (
            f"pid {region['worker']['pid']}"
            if region["worker"]
            else "stopped"
            if region["stopped_workers"]
            else "-"
        )
        print(
            f"{region['name']:10} {region['state']:12} {region['batches_done']:12d} "
            f"{region['batches_stopped']:8d} {region['ids_stored']:10d}  {worker}"
        )
    rows = [
        json.loads(line)["id"]
        for path in sorted(output.glob("prices.*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
    succeeded, failed = run.get("succeeded", 0), run.get("failed", 0)
    print(
        f"Run {run.get('run_id')}: {run.get('status')}; {succeeded} succeeded + {failed} failed "
        f"= {succeeded + failed} of {len(asked)} IDs"
    )
    print(f"Rows: {len(rows)} in {output}/prices.<region>.jsonl ({len(set(rows))} distinct IDs)")
    grown = [r["name"] for r in regions if r["name"] not in REGIONS[:2] and r["state"] == "active"]
    blocked = next(r for r in regions if r["name"] == BLOCKED)
    print(f"Hydra: {BLOCKED} is {blocked['state']}, its worker stopped; grown: {', '.join(grown)}")
    ok = (
        run.get("status") == "finished"
        and succeeded + failed == len(asked)
        and len(set(rows)) == succeeded  # a row for every succeeded ID, none for others
        and blocked["state"] == "quarantined"
        and len(grown) == 2
    )
    print("Check:", "every ID accounted for" if ok else "FAILED (see the controller log)")
    return 0 if ok else 1


def _regions(api: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{api}/regions", headers=headers, timeout=10).json()
    return answer
