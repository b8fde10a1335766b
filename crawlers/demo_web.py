"""``make demo``, seed 003's web channels: the sandbox shop from new channel to heal.

The shop is a JS page whose products come from a token-protected, paginated
JSON API. Job 1 (a new channel) captures it in headless Chromium, generates a
fetcher and commits it as v1; job 2 runs v1 without a browser; then the shop
moves to its v2 API (renamed fields, a moved endpoint, cursor pagination), job 3
fails as "website changed" and the heal task it queues produces v2, validates it
and promotes it. The summary shows both versions, their commits and item counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from crawlers.sandbox.shop_server import ShopServer

ROOT = Path(__file__).resolve().parent.parent


def run_web_demo(output: Path) -> int:
    output = output / "web"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYDRA_")}
    env.update(
        HYDRA_DB_URL=f"sqlite:///{output.resolve()}/hydra.db",
        HYDRA_STORE_URI=f"file://{output.resolve()}/store",
        HYDRA_TOPICS_PATH=str(output.resolve() / "topics"),
        HYDRA_DEADLETTER_PATH=str(output.resolve() / "deadletter.jsonl"),
        HYDRA_FETCHERS_REPO=str(output.resolve() / "fetchers-repo"),
    )
    print("\n==== Seed 003: a web channel, from a new site to a healed fetcher ====")
    with ShopServer() as shop:
        print(f"Sandbox shop {shop.shop_url} (JS page, bearer-token JSON API, 3 pages)")
        steps = [
            ("demo_web_1", True, "new channel: capture, generate v1, run"),
            ("demo_web_2", False, "run v1, no browser"),
        ]
        for job, is_new, what in steps:
            if not _crawl(output, env, job, shop.shop_url, is_new, what):
                return 1
        shop.set_api_version(2)
        print("The shop moves to its v2 API (renamed fields, new endpoint, cursor pages)")
        if not _crawl(output, env, "demo_web_3", shop.shop_url, False, "v1 breaks; heal"):
            return 1
    statuses = {
        m["message"]["job_id"]: m["message"]
        for m in _lines(output / "topics" / "hydra_status.jsonl")
    }
    print("\n==== Web channel summary ====")
    for job in ("demo_web_1", "demo_web_2", "demo_web_3", "demo_web_3-heal"):
        status = statuses.get(job, {})
        meta = status.get("metadata", {})
        state = status.get("status", "missing")
        print(
            f"{job:16} {state:8} items={meta.get('items', 0):3} fetcher={meta.get('fetcher', '')}"
        )
        print(f"{'':16} {status.get('message', '')}")
    log = subprocess.run(
        ["git", "-C", str(output / "fetchers-repo"), "log", "--format=%h %s"],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()  # fmt: skip
    print("Fetchers repository (newest first):")
    for line in log:
        print(f"  {line}")
    ok = (
        statuses.get("demo_web_1", {}).get("status") == "success"
        and statuses.get("demo_web_2", {}).get("status") == "success"
        and statuses.get("demo_web_3", {}).get("status") == "failed"
        and statuses.get("demo_web_3-heal", {}).get("status") == "success"
        and statuses["demo_web_3-heal"]["metadata"]["items"]
        == statuses["demo_web_1"]["metadata"]["items"]
        and len(log) == 2
    )
    print(f"Store: {output / 'store'}; generated code: {output / 'fetchers-repo' / 'fetchers'}")
    print(
        "Check:",
        "v1 generated, broken by the site change, healed to v2 with every item" if ok else "FAILED",
    )
    return 0 if ok else 1


def _crawl(output: Path, env: dict[str, str], job: str, url: str, is_new: bool, what: str) -> bool:
    task = {
        "job_id": job,
        "channel_id": "demo_shop",
        "source_type": "api",
        "is_new": is_new,
        "config": {"url": url},
    }
    path = output / f"{job}.json"
    path.write_text(json.dumps(task), encoding="utf-8")
    log = output / f"{job}.log"
    print(f"`scrapy crawl web` {job}: {what} (log: {log})")
    command = [
        sys.executable,
        "-m",
        "scrapy",
        "crawl",
        "web",
        "-a",
        f"task=@{path}",
        "-s",
        f"LOG_FILE={log}",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode not in (0,):
        print(f"The crawl failed (exit {done.returncode}); its log is {log}.")
        return False
    return True


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
