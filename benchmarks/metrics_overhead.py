"""The worker's throughput with Prometheus metrics on vs off, in the same run.

``python -m benchmarks.metrics_overhead [--ids 10000] [--rounds 5]``

Each round runs ``scrapy crawl prices`` (``benchmarks.runs.run_hydra``: 20-ID batches
through a private Redis, the project's settings) twice against one sandbox price API,
once without ``HYDRA_METRICS_PORT`` and once with ``HYDRA_METRICS_PORT=0`` and a file_sd
file, the order alternating round by round. With metrics on, a thread scrapes the
worker's ``/metrics`` every second, as a Prometheus with a short interval would
(``HYDRA_METRICS_INTERVAL_SECONDS=1``). Reported: req/s of each, and the median of the
per-round ratios (target >= 0.97).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from benchmarks.runs import BenchmarkAborted, RunResult, price_ids, run_hydra
from crawlers.monitoring import sd_file
from crawlers.sandbox import SandboxServer


class Scraper(threading.Thread):
    """Scrapes every target in the SD file once a second; counts the scrapes."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.scrapes = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for group in sd_file.read_groups(self.path):
                for target in group.get("targets", []):
                    try:
                        with urllib.request.urlopen(f"http://{target}/metrics", timeout=2) as r:
                            r.read()
                        self.scrapes += 1
                    except OSError:
                        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_overhead")
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    ids = price_ids(args.ids)
    rates: dict[str, list[float]] = {"metrics off": [], "metrics on": []}
    ratios: list[float] = []
    scrapes = 0
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hydra-bench-")))
        sandbox = stack.enter_context(SandboxServer(refuse_rate=0.0))
        sd_path = workdir / "workers.json"
        on = [
            "HYDRA_METRICS_PORT=0",
            f"HYDRA_METRICS_SD_FILE={sd_path}",
            "HYDRA_METRICS_INTERVAL_SECONDS=1",
        ]
        try:
            for number in range(args.rounds):
                order = ["metrics off", "metrics on"]
                if number % 2:
                    order.reverse()
                results: dict[str, RunResult] = {}
                for label in order:
                    scraper = Scraper(sd_path)
                    scraper.start()
                    settings = on if label == "metrics on" else []
                    result = run_hydra(label, sandbox, ids, workdir, settings=settings)
                    scraper.stop.set()
                    scraper.join()
                    scrapes += scraper.scrapes
                    status = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
                    print(f"round {number + 1}: {label:<12} {result.rate:8.1f} req/s  {status}")
                    if not result.ok:
                        return 1
                    results[label] = result
                    rates[label].append(result.rate)
                ratios.append(results["metrics on"].rate / results["metrics off"].rate)
        except BenchmarkAborted as exc:
            print(f"benchmark aborted: {exc}", file=sys.stderr)
            return 2
    for label, values in rates.items():
        print(f"{label:<12} median {statistics.median(values):8.1f} req/s  "
              f"({min(values):.1f} .. {max(values):.1f})")  # fmt: skip
    print(
        f"on/off ratio: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f} .. {max(ratios):.3f}); {scrapes} scrapes while metrics were on"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
