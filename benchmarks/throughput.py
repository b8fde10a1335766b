"""Requests/s of Hydra's ``prices`` worker against a plain Scrapy spider, on one local target.

Run from the repository root::

    python -m benchmarks.throughput [--ids 20000] [--order ab|ba]

Both runs POST the same IDs (``"1"`` .. ``str(N)``) to one sandbox price API
(:class:`crawlers.sandbox.SandboxServer`, in its own process):

(a) ``benchmarks/plain_spider.py`` under ``scrapy runspider`` in an empty temp
    dir: Scrapy's default settings, no project, DEBUG log sent to a file.
(b) ``scrapy crawl prices`` in the repository: the IDs go as 20-ID batch
    messages through a private ``redis-server``, the worker's lease queue, its
    middlewares and the JSON-lines sink.

Each run is timed by :class:`benchmarks.timing.ResponseTiming`, from the first
to the last response; process start-up and shutdown are reported apart. The
script exits non-zero if a run failed or lost IDs, never because of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawlers.sandbox import SandboxServer
from crawlers.settings import EXTENSIONS as HYDRA_EXTENSIONS
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PLAIN_SPIDER = ROOT / "benchmarks" / "plain_spider.py"
TIMING_EXTENSION = "benchmarks.timing.ResponseTiming"
QUEUE_KEY = "hydra:prices:batches"
DEADLETTER_KEY = "hydra:deadletter"
BATCH_SIZE = 20
RUN_ID = "bench"
#: environment variables that would make a child pick a Scrapy project or Hydra settings
PROJECT_ENV = ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT", "SCRAPY_CHECK")


class BenchmarkAborted(RuntimeError):
    """The environment broke (e.g. the target died): no later run would mean anything."""


@dataclass
class RunResult:
    """One benchmarked crawl, and what is wrong with it (if anything)."""

    label: str
    expected: int
    responses: int = 0
    items: int = 0
    seconds: float = 0.0  # first response -> last response
    wall: float = 0.0  # whole subprocess
    cpu: float = 0.0  # user + system CPU seconds of the Scrapy process
    startup: float = 0.0  # process start -> first response
    sandbox_requests: int = 0
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds > 0 else 0.0


def price_ids(count: int) -> list[str]:
    return [str(number) for number in range(1, count + 1)]


def clean_env() -> dict[str, str]:
    """This process's environment without anything that selects a project or Hydra settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in PROJECT_ENV and not name.startswith(("HYDRA_", "BENCH_"))
    }
    env["PYTHONPATH"] = str(ROOT)  # for benchmarks.timing (and crawlers, in run b)
    return env


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def log_head(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    with path.open(encoding="utf-8", errors="replace") as file:
        return "".join(line for _, line in zip(range(lines), file, strict=False))


def run_crawl(
    result: RunResult,
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timing_path: Path,
    timeout: float,
) -> None:
    """Run one Scrapy process and fill ``result`` from its timing file."""
    started = time.monotonic()
    before = os.times()
    with log_path.open("wb") as log:
        try:
            completed = subprocess.run(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            result.problems.append(f"timed out after {timeout:.0f} s (killed)")
            return
        finally:
            result.wall = time.monotonic() - started
            after = os.times()
            result.cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
    if completed.returncode != 0:
        result.problems.append(f"exit status {completed.returncode}")
    if not timing_path.exists():
        result.problems.append("no timing file: was the ResponseTiming extension enabled?")
        return
    timing: dict[str, Any] = json.loads(timing_path.read_text(encoding="utf-8"))
    result.responses = int(timing["responses"])
    result.items = int(timing["items"])
    if timing["first"] is not None and timing["last"] is not None:
        result.seconds = float(timing["last"]) - float(timing["first"])
        result.startup = float(timing["first"]) - started
    if result.responses != result.expected:
        result.problems.append(f"{result.responses} responses, expected {result.expected}")
    if result.items != result.expected:
        result.problems.append(f"{result.items} items scraped, expected {result.expected}")


def check_sandbox(result: RunResult, sandbox: SandboxServer, ids: Sequence[str]) -> None:
    """The target's own count: every ID asked exactly once."""
    try:
        stats = sandbox.stats()
    except OSError as exc:  # urllib's URLError is an OSError
        raise BenchmarkAborted(
            f"the sandbox at {sandbox.base_url} stopped answering: {exc}"
        ) from exc
    result.sandbox_requests = int(stats["requests"])
    per_id: dict[str, int] = stats["per_id"]
    missing = len(set(ids) - per_id.keys())
    repeated = sum(1 for count in per_id.values() if count > 1)
    result.checks.append(
        f"sandbox counted {result.sandbox_requests} requests for {len(per_id)} IDs "
        f"({missing} missing, {repeated} asked more than once)"
    )
    if missing:
        result.problems.append(f"the sandbox never saw {missing} IDs")


def run_plain(sandbox: SandboxServer, ids: Sequence[str], workdir: Path) -> RunResult:
    """(a) Scrapy's defaults: ``scrapy runspider`` in an empty dir, outside any project."""
    result = RunResult("(a) plain Scrapy", expected=len(ids))
    rundir = workdir / "plain"
    rundir.mkdir()
    timing_path = workdir / "plain-timing.json"
    log_path = workdir / "plain.log"
    command = [sys.executable, "-m", "scrapy", "runspider", str(PLAIN_SPIDER)]
    command += ["-a", f"ids={len(ids)}", "-a", f"url_template={sandbox.url_template}"]
    # The project has no EXTENSIONS here, so this adds the timer and changes nothing else.
    command += ["-s", "EXTENSIONS=" + json.dumps({TIMING_EXTENSION: 0})]
    command += ["-s", f"BENCH_TIMING_PATH={timing_path}"]
    sandbox.reset_stats()
    run_crawl(
        result,
        command,
        cwd=rundir,
        env=clean_env(),
        log_path=log_path,
        timing_path=timing_path,
        timeout=timeout_for(len(ids)),
    )
    check_sandbox(result, sandbox, ids)
    # Guard against a stray scrapy.cfg or settings module: the bot must be Scrapy's default.
    if "(bot: scrapybot)" not in log_head(log_path):
        result.problems.append("the plain run did not use Scrapy's default settings")
    if not result.ok:
        print(f"--- end of {log_path.name} ---\n{log_tail(log_path)}", file=sys.stderr)
    return result


def push_batches(server: RedisServer, ids: Sequence[str], url_template: str) -> int:
    """RPUSH the IDs as batch messages, the way any producer feeds Hydra."""
    messages = [
        json.dumps(
            {
                "run_id": RUN_ID,
                "batch_id": f"b{number:05d}",
                "ids": list(ids[start : start + BATCH_SIZE]),
                "url_template": url_template,
            }
        )
        for number, start in enumerate(range(0, len(ids), BATCH_SIZE), start=1)
    ]
    client = server.client()
    try:
        client.delete(QUEUE_KEY)
        for start in range(0, len(messages), 500):
            client.rpush(QUEUE_KEY, *messages[start : start + 500])
    finally:
        client.close()
    return len(messages)


def check_sink(result: RunResult, sink_path: Path, ids: Sequence[str]) -> None:
    rows = 0
    seen: Counter[str] = Counter()
    if sink_path.exists():
        with sink_path.open(encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    rows += 1
                    seen[str(json.loads(line)["id"])] += 1
    missing = len(set(ids) - seen.keys())
    result.checks.append(
        f"sink {sink_path.name}: {rows} rows, {len(seen)} distinct IDs "
        f"({missing} missing, {sum(1 for c in seen.values() if c > 1)} duplicated)"
    )
    if rows != len(ids) or len(seen) != len(ids) or missing:
        result.problems.append(f"sink has {rows} rows / {len(seen)} distinct IDs, not {len(ids)}")


def check_queue(result: RunResult, server: RedisServer) -> None:
    client = server.client()
    try:
        waiting = int(client.llen(QUEUE_KEY))
        leased = int(client.zcard(f"{{{QUEUE_KEY}}}:leases"))
        deadletter = int(client.llen(DEADLETTER_KEY))
    finally:
        client.close()
    result.checks.append(
        f"redis after the run: {waiting} waiting, {leased} leased, {deadletter} dead-lettered"
    )
    if waiting or leased or deadletter:
        result.problems.append("messages left in the queue, leased or dead-lettered")


def run_hydra(sandbox: SandboxServer, ids: Sequence[str], workdir: Path) -> RunResult:
    """(b) ``scrapy crawl prices`` with the project's settings, fed through Redis."""
    result = RunResult("(b) Hydra worker", expected=len(ids))
    redis_server = RedisServer(workdir / "redis")
    try:
        redis_server.start()
        batches = push_batches(redis_server, ids, sandbox.url_template)
        result.checks.append(f"pushed {len(ids)} IDs in {batches} batch messages to {QUEUE_KEY}")
        timing_path = workdir / "hydra-timing.json"
        sink_path = workdir / "bench.jsonl"
        log_path = workdir / "hydra.log"
        env = clean_env()
        env.update(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_IDLE_CLOSE_SECONDS="1",
            HYDRA_SINKS=f"jsonl://{sink_path}",
            HYDRA_DEADLETTER_PATH=str(workdir / "dl.jsonl"),
            HYDRA_SUMMARY_PATH=str(workdir / "summary.json"),
        )
        # `-s EXTENSIONS=...` replaces the project's dict: keep Hydra's own extensions in it.
        extensions = {**HYDRA_EXTENSIONS, TIMING_EXTENSION: 0}
        command = [sys.executable, "-m", "scrapy", "crawl", "prices"]
        command += ["-s", "EXTENSIONS=" + json.dumps(extensions)]
        command += ["-s", f"BENCH_TIMING_PATH={timing_path}"]
        sandbox.reset_stats()
        run_crawl(
            result,
            command,
            cwd=ROOT,
            env=env,
            log_path=log_path,
            timing_path=timing_path,
            timeout=timeout_for(len(ids)),
        )
        check_sandbox(result, sandbox, ids)
        check_sink(result, sink_path, ids)
        check_queue(result, redis_server)
        if not result.ok:
            print(f"--- end of {log_path.name} ---\n{log_tail(log_path)}", file=sys.stderr)
    finally:
        redis_server.stop()
    return result


def timeout_for(count: int) -> float:
    return 120 + count / 40


def report(results: list[RunResult], count: int, sandbox_url: str) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print()
    print(f"Throughput: {count} price IDs, POST to {sandbox_url}/price/{{id}}")
    print(f"CPU cores: {os.cpu_count()} (usable by this process: {affinity})")
    print()
    header = f"{'run':<20} {'requests':>9} {'seconds':>9} {'req/s':>9}"
    header += f" {'startup s':>10} {'wall s':>8} {'cpu s':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<20} {r.responses:>9} {r.seconds:>9.2f} {r.rate:>9.1f} "
            f"{r.startup:>10.2f} {r.wall:>8.2f} {r.cpu:>7.2f}"
        )
    print(
        "seconds: first to last response; startup: process start to first response; "
        "wall: whole process; cpu: its user+system time"
    )
    print()
    by_label = {r.label[:3]: r for r in results}
    plain, hydra = by_label.get("(a)"), by_label.get("(b)")
    if plain is not None and hydra is not None and plain.rate > 0:
        print(f"ratio b/a = {hydra.rate / plain.rate:.2f}")
    counted = ", ".join(f"{r.label[:3]} {r.sandbox_requests}" for r in results)
    print(f"sandbox counted requests: {counted}")
    print()
    for r in results:
        for line in r.checks:
            print(f"{r.label[:3]} check: {line}")
        status = "OK" if r.ok else "FAILED: " + "; ".join(r.problems)
        print(f"{r.label[:3]} {status}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ids", type=int, default=20_000, help="price IDs per run (20000)")
    parser.add_argument(
        "--order", choices=("ab", "ba"), default="ab", help="run (a) then (b), or (b) then (a)"
    )
    args = parser.parse_args(argv)
    if args.ids < 1:
        parser.error("--ids must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ids = price_ids(args.ids)
    runners = {"a": run_plain, "b": run_hydra}
    results: list[RunResult] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hydra-bench-")))
        sandbox = stack.enter_context(SandboxServer(refuse_rate=0.0))
        try:
            for key in args.order:
                label = "plain Scrapy" if key == "a" else "Hydra worker"
                print(f"running ({key}) {label} on {len(ids)} IDs ...", flush=True)
                results.append(runners[key](sandbox, ids, workdir))
        except BenchmarkAborted as exc:
            print(f"benchmark aborted: {exc}", file=sys.stderr)
            return 2
        results.sort(key=lambda r: r.label)
        report(results, len(ids), sandbox.base_url)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
