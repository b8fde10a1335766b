"""The ``prices`` worker fed from RabbitMQ against the same worker fed from Redis.

Run from the repository root::

    python -m benchmarks.amqp_queue [--ids 10000] [--rounds 3] [--processes 2]

Every round runs each variant once, in an order rotated round by round, against
one sandbox price API (no refusals), with the project's defaults (prefetch 16,
20-ID batches, the fsynced JSON-lines sink, acks after the flush):

- ``redis``: ``scrapy crawl prices`` with ``HYDRA_REDIS_URL`` (a fresh private
  ``redis-server`` per run, as in ``benchmarks.throughput``).
- ``rabbitmq``: the same command with ``HYDRA_QUEUE_URL=amqp://...`` on one private
  RabbitMQ (started once, a fresh queue per run): durable queue, persistent
  messages, publisher confirms, ``basic.qos`` prefetch 16, manual acks.
- ``... acks 0.1s`` (``--ack-interval``): both with ``HYDRA_ACK_INTERVAL_SECONDS=0.1``.
  A message is acked at the first settle round after it is done, and on RabbitMQ an
  unacked message takes one of the worker's ``prefetch_count`` deliveries, so the
  ack interval bounds that worker's rate (on Redis, finished messages awaiting their
  ack do not hold the worker's run slots).
- with ``--processes N``: both again as ``scrapy workers prices -p N``.

A run is timed from its first to its last response; the batches are pushed
before the worker starts. Every run is checked: each ID fetched once and stored
once, nothing left in the queue (ready or unacknowledged), nothing dead-lettered.
It exits non-zero if a run failed (2 if the target died), never because of a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import aio_pika

from benchmarks.runs import (
    BATCH_SIZE,
    ROOT,
    TIMING_EXTENSION,
    BenchmarkAborted,
    RunResult,
    check_sandbox,
    check_sinks,
    clean_env,
    log_tail,
    price_ids,
    read_timing,
    run_hydra,
    run_process,
)
from crawlers.sandbox import SandboxServer
from crawlers.settings import EXTENSIONS as HYDRA_EXTENSIONS
from tests.rabbitmqfixtures import RabbitMQServer

Runner = Callable[[str, SandboxServer, Sequence[str], Path], RunResult]


def batch_messages(ids: Sequence[str], url_template: str) -> list[str]:
    """The same 20-ID batch messages ``benchmarks.runs.push_batches`` puts on Redis."""
    messages = []
    for number, start in enumerate(range(0, len(ids), BATCH_SIZE), start=1):
        batch: dict[str, object] = {"run_id": "bench", "batch_id": f"b{number:05d}"}
        batch["url_template"] = url_template
        batch["ids"] = list(ids[start : start + BATCH_SIZE])
        messages.append(json.dumps(batch))
    return messages


async def _push(url: str, key: str, messages: Sequence[str]) -> None:
    """As a producer would: a durable queue, persistent messages, confirmed."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(key, durable=True)
        for start in range(0, len(messages), 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(body.encode(), delivery_mode=2), routing_key=key
                    )
                    for body in messages[start : start + 500]
                )
            )
    finally:
        await connection.close()


def check_amqp(result: RunResult, server: RabbitMQServer, key: str, deadletter: str) -> None:
    queues = server.queues()
    queue = queues.get(key, {})
    left = int(queue.get("messages_ready", 0)) + int(queue.get("messages_unacknowledged", 0))
    dead = int(queues.get(deadletter, {}).get("messages_ready", 0))
    result.checks.append(f"rabbitmq after the run: {left} ready or unacked, {dead} dead-lettered")
    if left or dead:
        result.problems.append("messages left in the queue, unacked or dead-lettered")


def run_amqp(
    server: RabbitMQServer,
    label: str,
    sandbox: SandboxServer,
    ids: Sequence[str],
    workdir: Path,
    processes: int = 1,
    settings: Sequence[str] = (),
) -> RunResult:
    """``scrapy crawl prices`` (or ``scrapy workers prices -p N``) on a fresh queue."""
    result = RunResult(label, expected=len(ids))
    slug = label.replace(" ", "-")
    rundir = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=workdir))
    tag = secrets.token_hex(4)
    key, deadletter = f"bench:{tag}:batches", f"bench:{tag}:deadletter"
    asyncio.run(_push(server.url, key, batch_messages(ids, sandbox.url_template)))
    env = clean_env()
    env.update(
        HYDRA_QUEUE_URL=server.url,
        HYDRA_PRICES_QUEUE_KEY=key,
        HYDRA_DEADLETTER_KEY=deadletter,
        HYDRA_IDLE_CLOSE_SECONDS="1",
        HYDRA_SINKS=f"jsonl://{rundir}/bench.jsonl",
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
    check_amqp(result, server, key, deadletter)
    if server.password in log_path.read_text(encoding="utf-8", errors="replace"):
        result.problems.append("the broker's password is in the worker's log")
    if not result.ok:
        print(f"--- end of {log_path.name} ---\n{log_tail(log_path)}", file=sys.stderr)
    return result


def variants(
    server: RabbitMQServer, processes: int, ack_interval: float, settings: Sequence[str] = ()
) -> dict[str, Runner]:
    def redis(count: int, extra: Sequence[str] = ()) -> Runner:
        return lambda label, sandbox, ids, workdir: run_hydra(
            label, sandbox, ids, workdir, processes=count, settings=[*settings, *extra]
        )

    def rabbitmq(count: int, extra: Sequence[str] = ()) -> Runner:
        return lambda label, sandbox, ids, workdir: run_amqp(
            server, label, sandbox, ids, workdir, processes=count, settings=[*settings, *extra]
        )

    table = {"redis": redis(1), "rabbitmq": rabbitmq(1)}
    if ack_interval > 0:
        tuned = [f"HYDRA_ACK_INTERVAL_SECONDS={ack_interval:g}"]
        table[f"redis acks {ack_interval:g}s"] = redis(1, tuned)  # no comma: HYDRA_SINKS
        table[f"rabbitmq acks {ack_interval:g}s"] = rabbitmq(1, tuned)
    if processes > 1:
        table[f"redis {processes} processes"] = redis(processes)
        table[f"rabbitmq {processes} processes"] = rabbitmq(processes)
    return table


def spread(values: Sequence[float], digits: int = 1) -> str:
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f} .. {high:.{digits}f})"


def report(rounds: list[dict[str, RunResult]], count: int) -> None:
    print(f"\nprices worker, {count} IDs per run, {len(rounds)} interleaved rounds\n")
    print(f"{'variant':<22} {'median req/s (min .. max)':<32} {'cpu s/run':>9}  startup s")
    for label in rounds[0]:
        rates = [r[label].rate for r in rounds]
        cpu = statistics.median(r[label].cpu for r in rounds)
        startup = statistics.median(r[label].startup for r in rounds)
        print(f"{label:<22} {spread(rates):<32} {cpu:9.1f}  {startup:9.2f}")
    print("\nratios (median of the per-round ratios, and their spread):")
    for label in rounds[0]:
        if not label.startswith("rabbitmq"):
            continue
        base = label.replace("rabbitmq", "redis")
        if base not in rounds[0]:
            continue
        ratios = [r[label].rate / r[base].rate for r in rounds if r[base].rate > 0]
        if ratios:
            print(f"  {label} / {base}: {spread(ratios, 2)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.amqp_queue", description=__doc__)
    parser.add_argument("--ids", type=int, default=10_000, help="price IDs per run (10000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="also run N worker processes")
    parser.add_argument(
        "--ack-interval",
        type=float,
        default=0.1,
        help="also run both with HYDRA_ACK_INTERVAL_SECONDS at this (0: don't)",
    )
    parser.add_argument(
        "-s", dest="settings", action="append", default=[], help="NAME=VALUE for every run"
    )
    args = parser.parse_args(argv)
    ids = price_ids(args.ids)
    rounds: list[dict[str, RunResult]] = []
    failed = False
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hydra-bench-")))
        server = RabbitMQServer(workdir / "rabbitmq").start()
        stack.callback(server.stop)
        sandbox = stack.enter_context(SandboxServer(refuse_rate=0.0))
        table = variants(server, args.processes, args.ack_interval, args.settings)
        labels = list(table)
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
