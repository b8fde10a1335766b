"""Seed 000 end to end against the bare worker: IDs/s of one run, same IDs, same machine.

``python -m benchmarks.hydra_run [--ids 20000] [--rounds 3]``

hydra:  ``scrapy controller`` with two regions (no egress proxy, so both variants
        reach the sandbox the same way) and their two workers, which it launches;
        timed from ``POST /runs`` until ``GET /runs/{id}`` says ``finished`` (every
        ID's ``stored`` event applied: dispatch, fetch, flush, event, accounting).
bare:   two ``scrapy crawl prices`` on the default queue, the run's batches pushed
        straight onto it; timed from the push until the JSON-lines sinks hold
        every row.
Both get a warm-up run first (their workers are up and connected), the same
batch size (100), and the same sinks; every run is checked: each ID stored
exactly once. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import redis

from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, worker_env
from tests.hydra import API_KEY, ControllerProcess
from tests.servers import RedisServer

BATCH = 100


def _rows(directory: Path) -> list[str]:
    return [row["id"] for path in directory.glob("rows*.jsonl") for row in read_jsonl(path)]


def _wait_rows(directory: Path, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows(directory)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(_rows(directory))} of {count} rows")
        time.sleep(0.05)


def _check(directory: Path, ids: Sequence[str], warmup: int) -> str:
    counts = Counter(_rows(directory))
    missing = [i for i in ids if counts[i] == 0]
    twice = [i for i, n in counts.items() if n > 1]
    extra = len(counts) - len(ids) - warmup
    if missing or twice or extra:
        return f"FAILED: {len(missing)} missing, {len(twice)} duplicated, {extra} unexpected"
    return "ok"


def bare(workdir: Path, redis_url: str, template: str, ids: list[str]) -> tuple[float, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    settings = {
        "HYDRA_REDIS_URL": redis_url,
        "HYDRA_PRICE_URL_TEMPLATE": template,
        "HYDRA_ACK_INTERVAL_SECONDS": 0.2,
    }
    workers = []
    for number in range(2):
        env = worker_env(**settings, HYDRA_SINKS=f"jsonl://{workdir}/rows.p{number}.jsonl")
        command = [sys.executable, "-m", "scrapy", "crawl", "prices"]
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env))
    try:
        warm = [f"warm-{n}" for n in range(64)]
        _push(client, "warm", warm, 4)
        _wait_rows(workdir, len(warm))
        started = time.perf_counter()
        _push(client, "bench", ids, BATCH)
        _wait_rows(workdir, len(warm) + len(ids))
        seconds = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
        client.close()
    return seconds, _check(workdir, ids, len(warm))


def _push(client: redis.Redis, run_id: str, ids: list[str], size: int) -> None:
    batches = [
        json.dumps({"run_id": run_id, "batch_id": f"b{n:06d}", "ids": ids[n : n + size]})
        for n in range(0, len(ids), size)
    ]
    client.rpush("hydra:prices:batches", *batches)


def hydra(workdir: Path, redis_url: str, template: str, ids: list[str]) -> tuple[float, str]:
    redis.Redis.from_url(redis_url).flushall()
    regions = [{"name": "r1", "neighbours": ["r2"], "start": True}, {"name": "r2", "start": True}]
    with ControllerProcess(
        workdir,
        redis_url,
        HYDRA_REGIONS=json.dumps(regions),
        HYDRA_PRICE_URL_TEMPLATE=template,
        HYDRA_SINKS=f"jsonl://{workdir}/rows.jsonl",
        HYDRA_WORKER_BATCH_SIZE=BATCH,
        HYDRA_QUEUE_LEASE_SECONDS=60,
        HYDRA_DISPATCH_RATE=200,
    ) as controller:
        warm = controller.call("POST", "/runs", json={"ids": [f"warm-{n}" for n in range(64)]})
        controller.wait_finished(warm.json()["run_id"], timeout=120)
        started = time.perf_counter()
        answer = controller.call("POST", "/runs", json={"ids": ids}, key=API_KEY)
        controller.wait_finished(answer.json()["run_id"], timeout=600)
        seconds = time.perf_counter() - started
    return seconds, _check(workdir, ids, 64)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    ids = [str(n) for n in range(1, args.ids + 1)]
    rates: dict[str, list[float]] = {"bare": [], "hydra": []}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-hydra-") as tmp, SandboxServer() as sandbox:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            for number in range(args.rounds):
                order = ["bare", "hydra"] if number % 2 == 0 else ["hydra", "bare"]
                this: dict[str, float] = {}
                for name in order:
                    workdir = Path(tmp) / f"{name}-{number}"
                    workdir.mkdir()
                    runner = bare if name == "bare" else hydra
                    seconds, verdict = runner(workdir, redis_server.url, sandbox.url_template, ids)
                    this[name] = len(ids) / seconds
                    rates[name].append(this[name])
                    print(
                        f"round {number + 1} {name:6} {this[name]:8.1f} IDs/s ({verdict})",
                        flush=True,
                    )
                    if verdict != "ok":
                        return 1
                ratios.append(this["hydra"] / this["bare"])
        finally:
            redis_server.stop()
    for name, values in rates.items():
        low, high = min(values), max(values)
        print(f"{name:6} median {statistics.median(values):8.1f} IDs/s ({low:.1f} .. {high:.1f})")
    low, high = min(ratios), max(ratios)
    print(f"hydra / bare: median {statistics.median(ratios):.2f} ({low:.2f} .. {high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
