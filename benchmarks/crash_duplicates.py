"""Duplicate rows caused by SIGKILLed workers: ``python -m benchmarks.crash_duplicates``.

Two ``scrapy crawl prices`` workers share one Redis queue of N IDs in batches of B.
Three times during the run (at 25, 50 and 75 % of the IDs requested) one of them is
killed with SIGKILL and a fresh worker takes its place. At the end the rows of
every worker's sink are counted: ``duplicates = rows - distinct IDs``; IDs missing
from every sink make the run fail. ``--repo`` runs the workers of another checkout
(e.g. a ``git worktree`` of an older commit) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crawlers.sandbox import SandboxServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def read_ids(path: Path) -> list[str]:
    ids = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):  # a torn last line of a killed writer
                ids.append(json.loads(line)["id"])
    return ids


def start_worker(
    repo: Path, workdir: Path, name: str, redis_url: str, template: str
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYDRA_")}
    env.update(
        PYTHONPATH=str(repo),
        HYDRA_REDIS_URL=redis_url,
        HYDRA_PRICE_URL_TEMPLATE=template,
        HYDRA_QUEUE_LEASE_SECONDS="2",
        HYDRA_IDLE_CLOSE_SECONDS="3",
        HYDRA_SINKS=f"jsonl://{workdir}/{name}.jsonl",
        HYDRA_SUMMARY_PATH=str(workdir / f"{name}.summary.json"),
    )
    log = (workdir / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "scrapy", "crawl", "prices"]
    try:
        return subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def run_once(repo: Path, ids: int, batch: int, kills: int, keep: bool = False) -> dict[str, int]:
    workdir = Path(tempfile.mkdtemp(prefix="hydra-dups-"))
    if keep:
        print(f"workers' files: {workdir}", flush=True)
    server = RedisServer(workdir / "redis").start()
    try:
        with SandboxServer(delay_seconds=0.01) as sandbox:
            return _crawl(repo, workdir, server, sandbox, ids, batch, kills)
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _crawl(
    repo: Path,
    workdir: Path,
    server: RedisServer,
    sandbox: SandboxServer,
    ids: int,
    batch: int,
    kills: int,
) -> dict[str, int]:
    template = sandbox.url_template
    asked = [f"id-{n:05d}" for n in range(ids)]
    client = server.client()
    client.rpush(
        "hydra:prices:batches",
        *[
            json.dumps({"run_id": "dups", "batch_id": f"b{n}", "ids": asked[n : n + batch]})
            for n in range(0, ids, batch)
        ],
    )
    client.close()
    names = ["w0", "w1"]
    workers = {name: start_worker(repo, workdir, name, server.url, template) for name in names}
    incarnation = 2
    for number in range(kills):
        target = ids * (number + 1) // (kills + 1)
        deadline = time.monotonic() + 120
        # by requests answered, not rows in the files: rows appear exactly at a flush,
        # which would aim every kill at the moment between a flush and its checkpoint
        while sandbox.stats()["requests"] < target:
            if time.monotonic() > deadline:
                raise RuntimeError("workers made no progress")
            time.sleep(0.02)
        victim = names[number % 2]
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        replacement = f"w{incarnation}"
        incarnation += 1
        workers[replacement] = start_worker(repo, workdir, replacement, server.url, template)
        names[number % 2] = replacement
    for name in names:
        workers[name].wait(300)
    rows = [id_ for name in workers for id_ in read_ids(workdir / f"{name}.jsonl")]
    return {
        "rows": len(rows),
        "distinct": len(set(rows)),
        "duplicates": len(rows) - len(set(rows)),
        "missing": len(set(asked) - set(rows)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=2000)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (20, 100)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose workers run")
    parser.add_argument("--keep", action="store_true", help="keep the workers' files and logs")
    args = parser.parse_args(argv)
    failed = False
    for batch in args.batch or [20, 100]:
        for round_number in range(1, args.rounds + 1):
            result = run_once(args.repo.resolve(), args.ids, batch, args.kills, args.keep)
            failed |= result["missing"] > 0
            print(
                f"batch {batch:4d}  round {round_number}: {result['rows']} rows, "
                f"{result['duplicates']} duplicates, {result['missing']} missing",
                flush=True,
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
