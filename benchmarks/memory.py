"""Peak memory of one ``prices`` worker by number of IDs: ``python -m benchmarks.memory``.

For each N (default 20,000 and 200,000) a private Redis gets N IDs as 20-ID batch
messages and one ``scrapy crawl prices`` consumes them against the sandbox; the
worker's peak resident set size is its ``VmHWM`` (sampled from /proc while it runs). A worker
that keeps something per ID (a fingerprint, a finished run, an item id) would
grow with N; Hydra's should not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.runs import (
    ROOT,
    RunResult,
    check_sinks,
    clean_env,
    price_ids,
    push_batches,
    wait_with_peak_rss,
)
from crawlers.sandbox import SandboxServer
from tests.servers import RedisServer


def peak_rss(count: int) -> tuple[float, float, bool]:
    """(peak RSS in MiB, seconds, every ID stored once)."""
    with tempfile.TemporaryDirectory(prefix="hydra-memory-") as temp:
        workdir = Path(temp)
        server = RedisServer(workdir / "redis").start()
        try:
            with SandboxServer() as sandbox:
                ids = price_ids(count)
                push_batches(server, ids, sandbox.url_template)
                env = clean_env()
                env.update(
                    HYDRA_REDIS_URL=server.url,
                    HYDRA_IDLE_CLOSE_SECONDS="1",
                    HYDRA_SINKS=f"jsonl://{workdir}/out.jsonl",
                )
                started = time.monotonic()
                with (workdir / "worker.log").open("wb") as log:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "scrapy", "crawl", "prices"],
                        cwd=ROOT, env=env, stdout=log, stderr=log,
                    )  # fmt: skip
                    status, rss = wait_with_peak_rss(process)
                seconds = time.monotonic() - started
                result = RunResult("memory", expected=count)
                check_sinks(result, [workdir / "out.jsonl"], ids)
                ok = status == 0 and result.ok
                return rss, seconds, ok
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, action="append", help="IDs per run (repeatable)")
    args = parser.parse_args()
    failed = False
    for count in args.ids or [20_000, 200_000]:
        rss, seconds, ok = peak_rss(count)
        failed |= not ok
        state = "ok" if ok else "FAILED (exit status or sink rows)"
        print(f"{count:>8} IDs: peak RSS {rss:6.1f} MiB in {seconds:6.1f} s  {state}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
