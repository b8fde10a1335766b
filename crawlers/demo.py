"""``make demo``: the main job on embedded defaults, with nothing else installed.

Starts the sandbox price API (which refuses some requests with 429), runs the
``prices`` spider over a few hundred IDs in embedded mode (in-process queue,
JSON-lines output), then checks the books: every ID asked is either stored or
dead-lettered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from crawlers.sandbox import SandboxServer

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=300, help="how many price IDs to fetch")
    parser.add_argument("--refuse-rate", type=float, default=0.03, help="sandbox 429 share")
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "demo")
    args = parser.parse_args(argv)
    sys.exit(run_demo(args.ids, args.refuse_rate, args.output))


if __name__ == "__main__":
    main()
