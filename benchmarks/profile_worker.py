"""Profile the ``prices`` worker under cProfile: ``python -m benchmarks.profile_worker``.

Starts a private Redis and the sandbox, pushes N IDs as 20-ID batches, runs
``scrapy crawl prices`` under ``cProfile`` and prints the functions with the most
own time and the most cumulative time. Each change of the lean hot path in
``benchmarks/README.md`` was chosen from this output.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.runs import ROOT, clean_env, price_ids, push_batches
from crawlers.sandbox import SandboxServer
from tests.servers import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=8000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", type=Path, help="keep the .prof file here")
    parser.add_argument("-s", dest="settings", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hydra-profile-") as temp:
        workdir = Path(temp)
        profile = args.output or workdir / "worker.prof"
        redis_server = RedisServer(workdir / "redis").start()
        try:
            with SandboxServer() as sandbox:
                push_batches(redis_server, price_ids(args.ids), sandbox.url_template)
                env = clean_env()
                env.update(
                    HYDRA_REDIS_URL=redis_server.url,
                    HYDRA_IDLE_CLOSE_SECONDS="1",
                    HYDRA_SINKS=f"jsonl://{workdir}/out.jsonl",
                )
                command = [sys.executable, "-m", "cProfile", "-o", str(profile)]
                command += ["-m", "scrapy", "crawl", "prices"]
                for setting in args.settings:
                    command += ["-s", setting]
                subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        finally:
            redis_server.stop()
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
