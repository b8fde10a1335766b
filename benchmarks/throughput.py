"""Requests/s of Hydra's ``prices`` worker against plain Scrapy, interleaved rounds.

Run from the repository root::

    python -m benchmarks.throughput [--ids 10000] [--rounds 3] [--processes 2]

Every round runs each variant once, in an order rotated round by round, against
one sandbox price API (in its own process):

- ``scrapy defaults``: ``benchmarks/plain_spider.py`` on Scrapy's defaults.
- ``scrapy tuned``: the same spider with what a Scrapy user tunes first
  (``CONCURRENT_ITEMS=2``, cookies off, ``WARN_ON_GENERATOR_RETURN_VALUE=False``,
  16 concurrent requests to the domain, INFO logging).
- ``hydra``: ``scrapy crawl prices`` with the project's defaults, fed 20-ID batch
  messages through a private Redis, every guarantee on (leases, checkpoints,
  acks after an fsynced JSON-lines sink, stop-on-non-200, dead letters).
- ``hydra N processes`` (with ``--processes N``): ``scrapy workers prices -p N``.
- ``aiohttp ceiling``: a raw aiohttp loop, 64 concurrent, for scale only.

It prints each variant's median req/s with its spread, and the ratios of Hydra
to both baselines as the median of the per-round ratios. It exits non-zero if a
run failed or lost IDs (2 if the target died), never because of a ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from benchmarks.runs import (
    BenchmarkAborted,
    RunResult,
    price_ids,
    run_aiohttp,
    run_hydra,
    run_plain,
)
from crawlers.sandbox import SandboxServer

Runner = Callable[[str, SandboxServer, Sequence[str], Path], RunResult]


def variants(processes: int, ceiling: bool, settings: Sequence[str] = ()) -> dict[str, Runner]:
    table: dict[str, Runner] = {
        "scrapy defaults": run_plain,
        "scrapy tuned": run_plain,
        "scrapy lean": run_plain,
        "hydra": lambda label, sandbox, ids, workdir: run_hydra(
            label, sandbox, ids, workdir, settings=settings
        ),
    }
    if processes > 1:
        table[f"hydra {processes} processes"] = lambda label, sandbox, ids, workdir: run_hydra(
            label, sandbox, ids, workdir, processes=processes
        )
    if ceiling:
        table["aiohttp ceiling"] = run_aiohttp
    return table


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):8.1f}  ({min(values):.1f} .. {max(values):.1f})"


def report(rounds: list[dict[str, RunResult]], count: int) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"\nThroughput: {count} price IDs per run, {len(rounds)} interleaved rounds")
    print(f"CPU cores: {os.cpu_count()} (usable: {affinity})\n")
    labels = list(rounds[0])
    print(f"{'variant':<22} {'median req/s':>12}  (min .. max)      cpu s/run  per round")
    for label in labels:
        rates = [r[label].rate for r in rounds]
        cpu = statistics.median(r[label].cpu for r in rounds)
        each = " ".join(f"{rate:.0f}" for rate in rates)
        print(f"{label:<22} {spread(rates):<32} {cpu:8.1f}  {each}")
    print("\nratios (median of the per-round ratios, and their spread):")
    for label in labels:
        if not label.startswith("hydra"):
            continue
        for base in ("scrapy defaults", "scrapy tuned", "hydra"):
            if base == label or base not in rounds[0]:
                continue
            ratios = [r[label].rate / r[base].rate for r in rounds if r[base].rate > 0]
            if ratios:
                print(f"  {label} / {base}: {spread(ratios)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--ids", type=int, default=10_000, help="price IDs per run (10000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="also run N worker processes")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the aiohttp loop")
    parser.add_argument("--only", help="comma-separated variants to run (for experiments)")
    parser.add_argument(
        "-s", dest="settings", action="append", default=[], help="NAME=VALUE for hydra runs"
    )
    args = parser.parse_args(argv)
    ids = price_ids(args.ids)
    table = variants(args.processes, not args.no_ceiling, args.settings)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        table = {label: runner for label, runner in table.items() if label in wanted}
    labels = list(table)
    rounds: list[dict[str, RunResult]] = []
    failed = False
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hydra-bench-")))
        sandbox = stack.enter_context(SandboxServer(refuse_rate=0.0))
        try:
            for number in range(args.rounds):
                order = labels[number % len(labels) :] + labels[: number % len(labels)]
                results: dict[str, RunResult] = {}
                for label in order:
                    result = table[label](label, sandbox, ids, workdir)
                    status = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
                    print(f"round {number + 1}: {label:<22} {result.rate:8.1f} req/s  {status}")
                    failed |= not result.ok
                    results[label] = result
                rounds.append({label: results[label] for label in labels})
        except BenchmarkAborted as exc:
            print(f"benchmark aborted: {exc}", file=sys.stderr)
            return 2
    report(rounds, len(ids))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
