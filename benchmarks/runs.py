"""One benchmarked crawl of each kind, and the checks that make its figure count.

Every run POSTs the same IDs (``"1"`` .. ``str(N)``) to one sandbox price API and
is timed from its first to its last response (:mod:`benchmarks.timing`); process
start-up and shutdown are reported apart. A run whose target did not see every
ID, or (for Hydra) whose sink or queue is not exactly right, is a failed run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawlers.sandbox import SandboxServer
from crawlers.settings import EXTENSIONS as HYDRA_EXTENSIONS
from crawlers.spiders.prices import PricesSpider
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PLAIN_SPIDER = ROOT / "benchmarks" / "plain_spider.py"
TIMING_EXTENSION = "benchmarks.timing.ResponseTiming"
QUEUE_KEY = "hydra:prices:batches"
DEADLETTER_KEY = "hydra:deadletter"
BATCH_SIZE = 20
#: environment variables that would make a child pick a Scrapy project or Hydra settings
PROJECT_ENV = ("SCRAPY_SETTINGS_MODULE", "SCRAPY_PROJECT", "SCRAPY_CHECK")

#: Scrapy settings of the plain baselines (besides the two servers every run turns off)
PLAIN_VARIANTS: dict[str, dict[str, object]] = {
    "scrapy defaults": {},
    # what a Scrapy user tunes first: the settings the issue names, and INFO logging
    "scrapy tuned": {
        "CONCURRENT_ITEMS": 2,
        "COOKIES_ENABLED": False,
        "WARN_ON_GENERATOR_RETURN_VALUE": False,
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
        "LOG_LEVEL": "INFO",
    },
}
#: the plain spider with every Scrapy setting of Hydra's lean price path: what Scrapy
#: alone gets from the same tuning, without leases, acks, checkpoints or sinks
PLAIN_VARIANTS["scrapy lean"] = {
    **PLAIN_VARIANTS["scrapy tuned"],
    **{
        name: value
        for name, value in PricesSpider.custom_settings.items()
        if name in ("DOWNLOAD_HANDLERS", "DOWNLOADER_MIDDLEWARES", "SPIDER_MIDDLEWARES")
    },
    "LOG_FORMATTER": "crawlers.logformatter.QuietLogFormatter",
}


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
    cpu: float = 0.0  # user + system CPU seconds of the process(es)
    startup: float = 0.0  # process start -> first response
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
    env["PYTHONPATH"] = str(ROOT)  # for benchmarks.timing (and crawlers, for Hydra)
    return env


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_with_peak_rss(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """``(exit status, peak RSS in MiB)`` of a child, from ``VmHWM`` in /proc while it runs.

    Not ``ru_maxrss`` from ``wait4``: that counts the parent's memory the child
    shared between ``fork`` and ``exec``, so a benchmark process holding test data
    would inflate every worker's figure."""
    peak_kib = 0
    status_path = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status_path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return process.returncode, peak_kib / 1024


def timeout_for(count: int) -> float:
    return 120 + count / 40


def run_process(
    result: RunResult, command: list[str], *, cwd: Path, env: dict[str, str], log_path: Path
) -> None:
    """Run one process (a crawl, a launcher of several) to its end."""
    started = time.monotonic()
    before = os.times()
    with log_path.open("wb") as log:
        try:
            completed = subprocess.run(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                timeout=timeout_for(result.expected), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            result.problems.append("timed out (killed)")
            return
        finally:
            result.wall = time.monotonic() - started
            after = os.times()
            result.cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            result.startup = started  # made relative in read_timing()
    if completed.returncode != 0:
        result.problems.append(f"exit status {completed.returncode}")


def read_timing(result: RunResult, paths: Sequence[Path]) -> None:
    """Responses summed, first-to-last across every process's timing file."""
    documents: list[dict[str, Any]] = [
        json.loads(path.read_text(encoding="utf-8")) for path in paths
    ]
    if not documents:
        result.problems.append("no timing file: was the ResponseTiming extension enabled?")
        return
    result.responses = sum(int(d["responses"]) for d in documents)
    result.items = sum(int(d["items"]) for d in documents)
    firsts = [float(d["first"]) for d in documents if d["first"] is not None]
    lasts = [float(d["last"]) for d in documents if d["last"] is not None]
    if firsts and lasts:
        result.seconds = max(lasts) - min(firsts)
        result.startup = min(firsts) - result.startup
    if result.responses != result.expected:
        result.problems.append(f"{result.responses} responses, expected {result.expected}")
    if result.items != result.expected:
        result.problems.append(f"{result.items} items, expected {result.expected}")


def check_sandbox(result: RunResult, sandbox: SandboxServer, ids: Sequence[str]) -> None:
    """The target's own count: every ID asked exactly once."""
    try:
        stats = sandbox.stats()
    except OSError as exc:  # urllib's URLError is an OSError
        raise BenchmarkAborted(f"the sandbox stopped answering: {exc}") from exc
    per_id: dict[str, int] = stats["per_id"]
    missing = len(set(ids) - per_id.keys())
    repeated = sum(1 for count in per_id.values() if count > 1)
    result.checks.append(
        f"sandbox: {stats['requests']} requests, {missing} IDs missing, {repeated} repeated"
    )
    if missing or repeated:
        result.problems.append(f"the sandbox saw {missing} IDs missing, {repeated} repeated")


def run_plain(label: str, sandbox: SandboxServer, ids: Sequence[str], workdir: Path) -> RunResult:
    """A plain spider under ``scrapy runspider`` in an empty dir, outside any project."""
    result = RunResult(label, expected=len(ids))
    slug = label.replace(" ", "-")
    rundir = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=workdir))  # fresh every round
    timing_path, log_path = workdir / f"{slug}-timing.json", workdir / f"{slug}.log"
    timing_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "scrapy", "runspider", str(PLAIN_SPIDER)]
    command += ["-a", f"ids={len(ids)}", "-a", f"url_template={sandbox.url_template}"]
    command += ["-s", "EXTENSIONS=" + json.dumps({TIMING_EXTENSION: 0})]
    command += ["-s", f"BENCH_TIMING_PATH={timing_path}"]
    for name, value in PLAIN_VARIANTS[label].items():
        command += ["-s", f"{name}={json.dumps(value) if not isinstance(value, str) else value}"]
    sandbox.reset_stats()
    run_process(result, command, cwd=rundir, env=clean_env(), log_path=log_path)
    read_timing(result, [timing_path] if timing_path.exists() else [])
    check_sandbox(result, sandbox, ids)
    head = log_path.read_text(encoding="utf-8", errors="replace")[:4000]
    if "(bot: scrapybot)" not in head:  # a stray scrapy.cfg or settings module
        result.problems.append("the plain run did not use Scrapy's default settings")
    if not result.ok:
        print(f"--- end of {log_path.name} ---\n{log_tail(log_path)}", file=sys.stderr)
    return result


def push_batches(server: RedisServer, ids: Sequence[str], url_template: str) -> int:
    """RPUSH the IDs as batch messages, the way any producer feeds Hydra."""
    messages = []
    for number, start in enumerate(range(0, len(ids), BATCH_SIZE), start=1):
        batch: dict[str, object] = {"run_id": "bench", "batch_id": f"b{number:05d}"}
        batch["url_template"] = url_template
        batch["ids"] = list(ids[start : start + BATCH_SIZE])
        messages.append(json.dumps(batch))
    client = server.client()
    try:
        for start in range(0, len(messages), 500):
            client.rpush(QUEUE_KEY, *messages[start : start + 500])
    finally:
        client.close()
    return len(messages)


def check_sinks(result: RunResult, sinks: Sequence[Path], ids: Sequence[str]) -> None:
    seen: Counter[str] = Counter()
    for path in sinks:
        with path.open(encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    seen[str(json.loads(line)["id"])] += 1
    rows = sum(seen.values())
    missing = len(set(ids) - seen.keys())
    result.checks.append(f"sinks: {rows} rows, {len(seen)} distinct IDs, {missing} missing")
    if rows != len(ids) or missing:
        result.problems.append(f"sinks hold {rows} rows / {len(seen)} distinct IDs")


def check_queue(result: RunResult, server: RedisServer) -> None:
    client = server.client()
    try:
        left = int(client.llen(QUEUE_KEY)) + int(client.zcard(f"{{{QUEUE_KEY}}}:leases"))
        dead = int(client.llen(DEADLETTER_KEY))
    finally:
        client.close()
    result.checks.append(f"redis after the run: {left} waiting or leased, {dead} dead-lettered")
    if left or dead:
        result.problems.append("messages left in the queue, leased or dead-lettered")


def run_hydra(
    label: str,
    sandbox: SandboxServer,
    ids: Sequence[str],
    workdir: Path,
    processes: int = 1,
    settings: Sequence[str] = (),
) -> RunResult:
    """``scrapy crawl prices`` (or ``scrapy workers prices -p N``) with the project's
    settings, fed through a private Redis."""
    result = RunResult(label, expected=len(ids))
    slug = label.replace(" ", "-")
    rundir = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=workdir))  # fresh every round
    redis_server = RedisServer(rundir / "redis")
    try:
        redis_server.start()
        push_batches(redis_server, ids, sandbox.url_template)
        env = clean_env()
        env.update(
            HYDRA_REDIS_URL=redis_server.url,
            HYDRA_IDLE_CLOSE_SECONDS="1",
            HYDRA_SINKS=f"jsonl://{rundir}/bench.jsonl",
            HYDRA_DEADLETTER_PATH=str(rundir / "dl.jsonl"),
        )
        extensions = {**HYDRA_EXTENSIONS, TIMING_EXTENSION: 0}
        if processes == 1:
            command = [sys.executable, "-m", "scrapy", "crawl", "prices"]
        else:
            command = [sys.executable, "-m", "scrapy", "workers", "prices", "-p", str(processes)]
        command += ["-s", "EXTENSIONS=" + json.dumps(extensions)]
        command += ["-s", f"BENCH_TIMING_PATH={rundir}/timing-{{pid}}.json"]
        for setting in settings:
            command += ["-s", setting]
        sandbox.reset_stats()
        log_path = workdir / f"{slug}.log"
        run_process(result, command, cwd=ROOT, env=env, log_path=log_path)
        read_timing(result, sorted(rundir.glob("timing-*.json")))
        check_sandbox(result, sandbox, ids)
        check_sinks(result, sorted(rundir.glob("bench*.jsonl")), ids)
        check_queue(result, redis_server)
        if not result.ok:
            print(f"--- end of {log_path.name} ---\n{log_tail(log_path)}", file=sys.stderr)
    finally:
        redis_server.stop()
    return result


def run_aiohttp(label: str, sandbox: SandboxServer, ids: Sequence[str], workdir: Path) -> RunResult:
    result = RunResult(label, expected=len(ids))
    timing_path = workdir / "aiohttp-timing.json"
    timing_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.aiohttp_ceiling", "--ids", str(len(ids))]
    command += ["--url-template", sandbox.url_template, "--timing", str(timing_path)]
    sandbox.reset_stats()
    run_process(result, command, cwd=ROOT, env=clean_env(), log_path=workdir / "aiohttp.log")
    read_timing(result, [timing_path] if timing_path.exists() else [])
    check_sandbox(result, sandbox, ids)
    return result
