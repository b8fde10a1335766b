"""``make demo``: the main jobs on embedded defaults, with nothing else installed.

Starts the sandbox price API (which refuses some requests with 429), runs the
``prices`` spider over a few hundred IDs in embedded mode (in-process queue,
JSON-lines output), then checks the books: every ID asked is either stored or
dead-lettered. Then seed 000's hydra (``crawlers/demo_hydra.py``): a controller,
four sandbox regions, one banned midway and replaced by two neighbours. Then seed
003: a local FTP server, and the same channel fetched twice by ``scrapy crawl
ftp`` (SQLite state, a local store, JSON-lines topics): the second job stores
nothing new. Last, a web channel (``crawlers/demo_web.py``): the sandbox shop from
new channel to generated v1, broken by an API change, healed to v2. And the
scheduler (``crawlers/demo_scheduler.py``): a task every 3 s, a failing task
retried and then alerting through a webhook. Last, seed 002's data path
(``crawlers/demo_etl.py``): prices to a raw stream, ``scrapy etl`` into ClickHouse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from crawlers.demo_etl import run_etl_demo
from crawlers.demo_hydra import run_hydra_demo
from crawlers.demo_scheduler import run_scheduler_demo
from crawlers.demo_web import run_web_demo
from crawlers.sandbox import SandboxServer
from crawlers.sandbox.ftp import FtpSandbox

ROOT = Path(__file__).resolve().parent.parent


def run_demo(ids: int, refuse_rate: float, output: Path) -> int:
    output.mkdir(parents=True, exist_ok=True)
    sink, deadletter, summary, log = (
        output / name for name in ("prices.jsonl", "deadletter.jsonl", "summary.json", "crawl.log")
    )
    for path in (sink, deadletter, summary, log):
        path.unlink(missing_ok=True)
    asked = [f"tcg-{number:05d}" for number in range(1, ids + 1)]
    with SandboxServer(refuse_rate=refuse_rate, seed=7) as sandbox:
        print(f"Sandbox price API on {sandbox.base_url} (refusing ~{refuse_rate:.0%} with 429)")
        env = {key: value for key, value in os.environ.items() if not key.startswith("HYDRA_")}
        env.update(
            HYDRA_SINKS=f"jsonl://{sink.resolve()}",
            HYDRA_DEADLETTER_PATH=str(deadletter.resolve()),
            HYDRA_SUMMARY_PATH=str(summary.resolve()),
        )
        command = [sys.executable, "-m", "scrapy", "crawl", "prices", "-a", "run_id=demo"]
        command += ["-a", "ids=" + ",".join(asked), "-a", f"url_template={sandbox.url_template}"]
        command += ["-s", f"LOG_FILE={log.resolve()}"]
        print(f"Crawling {len(asked)} IDs with `scrapy crawl prices` (log: {log})")
        process = subprocess.run(command, cwd=ROOT, env=env, check=False)
        refused = sandbox.stats()["refused"]
    if process.returncode != 0 or not summary.exists():
        print(f"The crawl failed (exit {process.returncode}); its log is {log}.")
        return 1
    stored = {json.loads(line)["id"] for line in sink.read_text().splitlines() if line}
    dead = set()
    if deadletter.exists():
        for line in deadletter.read_text().splitlines():
            dead.update(json.loads(json.loads(line)["payload"])["ids"])
    missing = set(asked) - stored - dead
    print("\n==== Hydra demo summary ====")
    for line in json.loads(summary.read_text())["summary"]:
        print(line)
    print(f"Sandbox refusals:  {refused} (each stopped a batch; its remainder was requeued)")
    print(
        f"Check:             {len(stored)} stored + {len(dead)} dead-lettered "
        f"of {len(asked)} asked; {len(missing)} missing"
    )
    return 0 if not missing else 1


def run_fetch_demo(output: Path) -> int:
    """Seed 003 on a local FTP server: the same channel fetched twice; the second job
    finds every file unchanged and stores nothing."""
    output = output / "fetch"
    if output.exists():
        shutil.rmtree(output)
    source = output / "ftp-root"
    for name, text in DEMO_FILES.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYDRA_")}
    env.update(
        HYDRA_DB_URL=f"sqlite:///{output.resolve()}/hydra.db",
        HYDRA_STORE_URI=f"file://{output.resolve()}/store",
        HYDRA_TOPICS_PATH=str(output.resolve() / "topics"),
        HYDRA_DEADLETTER_PATH=str(output.resolve() / "deadletter.jsonl"),
    )
    print("\n==== Seed 003: an FTP channel fetched twice ====")
    with FtpSandbox(source) as ftp:
        for number in (1, 2):
            task = {
                "job_id": f"demo_job_{number}",
                "channel_id": "demo_channel",
                "source_type": "ftp",
                "config": {
                    "host": "127.0.0.1",
                    "port": ftp.port,
                    "username": ftp.username,
                    "password": ftp.password,
                    "remote_path": "/",
                    "file_pattern": "*.csv",
                },
            }
            task_path = output / f"task{number}.json"
            task_path.write_text(json.dumps(task), encoding="utf-8")
            log = output / f"crawl{number}.log"
            command = [sys.executable, "-m", "scrapy", "crawl", "ftp", "-a", f"task=@{task_path}"]
            command += ["-s", f"LOG_FILE={log}"]
            done = subprocess.run(command, cwd=ROOT, env=env, check=False)
            if done.returncode != 0:
                print(f"The fetch crawl failed (exit {done.returncode}); its log is {log}.")
                return 1
            status = _last_message(output / "topics" / "hydra_status.jsonl")
            parsers = _last_message(output / "topics" / "hydra_parsers.jsonl")
            print(f"Job {number}: {status['status']}: {status['message']}")
            print(
                f"       parsers topic: file_count={parsers['file_count']} "
                f"s3_output_path={parsers['s3_output_path']}"
            )
    stored = sorted(p.relative_to(output / "store") for p in (output / "store").rglob("*.csv"))
    print(f"Store:             {output / 'store'} ({len(stored)} files, all from job 1)")
    print(f"Topics:            {output / 'topics'}; state: {output / 'hydra.db'}")
    return 0


#: the demo channel's files: three CSV files (one nested) and one the pattern skips
DEMO_FILES = {
    "prices/2026-11-29.csv": "id,price\n1,9.99\n2,19.50\n",
    "prices/2026-11-30.csv": "id,price\n1,10.49\n2,19.50\n",
    "inventory.csv": "sku,count\nA,3\nB,0\n",
    "README.txt": "not fetched: the pattern is *.csv\n",
}


def _last_message(path: Path) -> dict[str, object]:
    line = path.read_text(encoding="utf-8").splitlines()[-1]
    message: dict[str, object] = json.loads(line)["message"]
    return message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=300, help="how many price IDs to fetch")
    parser.add_argument("--refuse-rate", type=float, default=0.03, help="sandbox 429 share")
    parser.add_argument("--hydra-ids", type=int, default=3000, help="IDs of the hydra run")
    parser.add_argument("--etl-ids", type=int, default=200, help="IDs through the ETL path")
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "demo")
    args = parser.parse_args(argv)
    code = run_demo(args.ids, args.refuse_rate, args.output)
    code = code or run_hydra_demo(args.hydra_ids, args.output)
    code = code or run_fetch_demo(args.output)
    code = code or run_web_demo(args.output)
    code = code or run_scheduler_demo(args.output)
    sys.exit(code or run_etl_demo(args.etl_ids, args.output))


if __name__ == "__main__":
    main()
