"""Seed 003's generated fetchers: how long generation takes, and how fast the result runs.

``python -m benchmarks.web_fetcher [--products 20000] [--rounds 3]``

1. Generation for the sandbox shop (v2 API, 57 products): Chromium capture (HAR),
   analysis, rendering, commit, each timed (3 times, median).
2. Items/s of the generated fetcher (`scrapy crawl web`, the mapped v2, storing
   every page and the items through the file pipelines) against a hand-written
   Scrapy spider for the same API (`benchmarks/shop_spider.py`, items to a
   JSON-lines feed), on a shop of ``--products`` items, 20 per page (cursor
   pages: one request after the other for both), in alternating rounds. Both
   are timed by Scrapy's own ``elapsed_time_seconds`` (spider open to close).
   Every run is checked: every item, once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crawlers.fetchers.analysis import analyse
from crawlers.fetchers.capture import capture
from crawlers.fetchers.generate import render_module
from crawlers.fetchers.repository import FetcherRepository, fetcher_name
from crawlers.fetchers.workshop import structure_id
from crawlers.sandbox.shop_server import ShopServer

ROOT = Path(__file__).resolve().parent.parent
ELAPSED = re.compile(r"'elapsed_time_seconds': ([0-9.]+)")


def generation(shop: ShopServer, workdir: Path) -> dict[str, float]:
    timings: dict[str, float] = {}
    repo = FetcherRepository(str(workdir / "repo"), workdir / "cache")
    repo.open()
    started = time.perf_counter()
    har_path, exploration = asyncio.run(
        capture(shop.shop_url, login=None, navigation={}, out_dir=workdir / "capture")
    )
    timings["capture"] = time.perf_counter() - started
    mark = time.perf_counter()
    recipe = analyse(json.loads(har_path.read_text()), exploration.page_texts)
    timings["analysis"] = time.perf_counter() - mark
    mark = time.perf_counter()
    site = structure_id(shop.shop_url)
    source = render_module(recipe, domain=site, version=1, reason="benchmark")
    timings["render"] = time.perf_counter() - mark
    mark = time.perf_counter()
    repo.commit(fetcher_name(site, 1), source, "benchmark")
    timings["commit"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return timings


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env.update(
        HYDRA_DB_URL=f"sqlite:///{workdir}/state.db",
        HYDRA_STORE_URI=f"file://{workdir}/store",
        HYDRA_TOPICS_PATH=str(workdir / "topics"),
        HYDRA_DEADLETTER_PATH=str(workdir / "dl.jsonl"),
        HYDRA_FETCHERS_REPO=str(workdir / "repo"),
        HYDRA_WEB_MAX_PAGES="100000",
    )
    return env


def _crawl_web(workdir: Path, job: str, url: str, is_new: bool) -> str:
    task = {
        "job_id": job,
        "channel_id": "bench",
        "source_type": "api",
        "is_new": is_new,
        "config": {"url": url},
    }
    path = workdir / f"{job}.json"
    path.write_text(json.dumps(task))
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "web", "-a", f"task=@{path}"],
        cwd=ROOT, env=_env(workdir), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stderr


def hydra_run(workdir: Path, shop: ShopServer, job: str, expected: int) -> float:
    log = _crawl_web(workdir, job, shop.shop_url, False)
    status = [
        json.loads(line)["message"]
        for line in (workdir / "topics" / "hydra_status.jsonl").read_text().splitlines()
    ]
    mine = next(s for s in status if s["job_id"] == job)
    if mine["status"] != "success" or mine["metadata"]["items"] != expected:
        raise RuntimeError(f"hydra run wrong: {mine}")
    return float(ELAPSED.findall(log)[-1])


def plain_run(workdir: Path, shop: ShopServer, job: str, expected: int) -> float:
    feed = workdir / f"{job}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "SCRAPY_"))}
    feeds = json.dumps({str(feed): {"format": "jsonlines"}})
    spider = str(ROOT / "benchmarks" / "shop_spider.py")
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "runspider", spider, "-a", f"base={shop.base_url}",
         "-s", f"FEEDS={feeds}"],
        cwd=workdir, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    codes = [json.loads(line)["code"] for line in feed.read_text().splitlines()]
    if len(codes) != expected or len(set(codes)) != expected:
        raise RuntimeError(f"plain run wrong: {len(codes)} items")
    return float(ELAPSED.findall(done.stderr)[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        gen: list[dict[str, float]] = []
        with ShopServer(api_version=2) as small:
            for n in range(3):
                gen.append(generation(small, Path(tmp) / f"gen{n}"))
        for phase in gen[0]:
            print(f"generation {phase:9} median {statistics.median(g[phase] for g in gen):6.2f} s")
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        rates: dict[str, list[float]] = {"generated": [], "hand-written": []}
        with ShopServer(api_version=2, products=args.products) as shop:
            _crawl_web(workdir, "bench-new", shop.shop_url, True)  # v1 generated once
            for n in range(args.rounds):
                order = (
                    ["generated", "hand-written"] if n % 2 == 0 else ["hand-written", "generated"]
                )
                for name in order:
                    run = hydra_run if name == "generated" else plain_run
                    seconds = run(workdir, shop, f"r{n}-{name}", args.products)
                    rates[name].append(args.products / seconds)
                    print(f"round {n + 1} {name:12} {rates[name][-1]:8.1f} items/s", flush=True)
        for name, values in rates.items():
            low, high = min(values), max(values)
            middle = statistics.median(values)
            print(f"{name:12} median {middle:8.1f} items/s ({low:.1f} .. {high:.1f})")
        ratios = [g / h for g, h in zip(rates["generated"], rates["hand-written"], strict=True)]
        low, high = min(ratios), max(ratios)
        middle = statistics.median(ratios)
        print(f"generated / hand-written: median {middle:.2f} ({low:.2f} .. {high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
