"""Real ``scrapy crawl prices`` workers on RabbitMQ (``HYDRA_QUEUE_URL``), same spider code
as on Redis: a worker SIGKILLed mid-run loses no ID (its unacked messages come back from the
broker; only what it held can be fetched twice), invalid messages are dead-lettered with the
reason, a graceful stop gives back exactly what was not fetched."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from crawlers.models import DeadLetterEntry
from crawlers.sandbox import SandboxServer
from tests.conftest import ROOT, read_jsonl, read_summary, run_worker, scrapy_command, worker_env
from tests.rabbitmqfixtures import RabbitMQServer, rabbitmq_server

pytestmark = pytest.mark.integration

__all__ = ["rabbitmq_server"]  # the fixture, imported for pytest

IDS = [f"id-{n:04d}" for n in range(1000)]
PREFETCH = 4


class Broker:
    """One test's queues on the session's RabbitMQ."""

    def __init__(self, server: RabbitMQServer) -> None:
        self.server = server
        tag = secrets.token_hex(4)
        self.key = f"hydra:prices:{tag}"
        self.deadletter = f"hydra:deadletter:{tag}"

    def settings(self) -> dict[str, object]:
        return {
            "HYDRA_QUEUE_URL": self.server.url,
            "HYDRA_PRICES_QUEUE_KEY": self.key,
            "HYDRA_DEADLETTER_KEY": self.deadletter,
        }

    def push(self, bodies: Sequence[str]) -> None:
        """As another system would: persistent messages, confirmed, to a durable queue."""

        async def main() -> None:
            connection = await aio_pika.connect(self.server.url)
            try:
                channel = await connection.channel(publisher_confirms=True)
                await channel.declare_queue(self.key, durable=True)
                for body in bodies:
                    message = aio_pika.Message(body.encode(), delivery_mode=2)
                    await channel.default_exchange.publish(message, routing_key=self.key)
            finally:
                await connection.close()

        asyncio.run(main())

    def take(self, name: str) -> list[bytes]:
        async def main() -> list[bytes]:
            connection = await aio_pika.connect(self.server.url)
            try:
                channel = await connection.channel()
                queue = await channel.declare_queue(name, durable=True)
                bodies = []
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    bodies.append(message.body)
                return bodies
            finally:
                await connection.close()

        return asyncio.run(main())

    def deadletters(self) -> list[DeadLetterEntry]:
        return [DeadLetterEntry.model_validate_json(body) for body in self.take(self.deadletter)]

    def state(self) -> dict[str, Any]:
        return self.server.queues()[self.key]


def batches(ids: list[str], size: int, run_id: str) -> list[str]:
    return [
        json.dumps({"run_id": run_id, "batch_id": f"b{n:04d}", "ids": ids[n : n + size]})
        for n in range(0, len(ids), size)
    ]


def start_worker(
    tmp_path: Path, name: str, broker: Broker, template: str, **settings: object
) -> subprocess.Popen[bytes]:
    env = worker_env(
        **broker.settings(),
        HYDRA_PRICE_URL_TEMPLATE=template,
        HYDRA_QUEUE_PREFETCH=PREFETCH,
        HYDRA_IDLE_CLOSE_SECONDS=4,
        HYDRA_ACK_INTERVAL_SECONDS=0.2,
        HYDRA_SINKS=f"jsonl://{tmp_path}/{name}.jsonl",
        HYDRA_SUMMARY_PATH=str(tmp_path / f"{name}.summary.json"),
        **settings,
    )
    log = (tmp_path / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(scrapy_command(), cwd=ROOT, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def wait_until_stored(
    worker: subprocess.Popen[bytes], tmp_path: Path, name: str, rows: int
) -> None:
    deadline = time.monotonic() + 60
    while len(read_jsonl(tmp_path / f"{name}.jsonl")) < rows:
        assert worker.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{name} never got going"
        time.sleep(0.05)


def stop_all(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkilled_worker_loses_nothing_and_only_what_it_held_is_fetched_twice(
    tmp_path: Path, rabbitmq_server: RabbitMQServer
) -> None:
    broker = Broker(rabbitmq_server)
    size = 25
    invalid = [
        "{not json",
        json.dumps({"run_id": "crash", "batch_id": "empty", "ids": []}),
        json.dumps({"batch_id": "no-run-id", "ids": ["x"]}),
    ]
    good = batches(IDS, size, "crash")
    broker.push([*good[:10], invalid[0], *good[10:20], invalid[1], *good[20:], invalid[2]])
    with SandboxServer(delay_seconds=0.01) as sandbox:
        victim = start_worker(tmp_path, "victim", broker, sandbox.url_template)
        survivor = start_worker(tmp_path, "survivor", broker, sandbox.url_template)
        try:
            wait_until_stored(victim, tmp_path, "victim", 150)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            assert survivor.wait(120) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
            per_id = sandbox.stats()["per_id"]
        finally:
            stop_all(victim, survivor)
    victim_rows = read_jsonl(tmp_path / "victim.jsonl")
    survivor_rows = read_jsonl(tmp_path / "survivor.jsonl")
    victim_ids = [row["id"] for row in victim_rows]
    survivor_ids = [row["id"] for row in survivor_rows]
    assert set(victim_ids) | set(survivor_ids) == set(IDS)  # nothing lost
    assert len(victim_ids) == len(set(victim_ids))
    assert len(survivor_ids) == len(set(survivor_ids))
    stats = read_summary(tmp_path / "survivor.summary.json")["stats"]
    # the messages the victim held unacked (at most its prefetch) came back, each once
    reclaimed = stats["hydra/queue/reclaimed"]
    assert 1 <= reclaimed <= PREFETCH
    assert stats["hydra/queue/redelivered"] == reclaimed
    # what is fetched or stored twice lies in those messages only: a broker cannot take a
    # checkpoint, so a held batch comes back whole
    batch_of = {id_: n // size for n, id_ in enumerate(IDS)}
    duplicates = set(victim_ids) & set(survivor_ids)
    refetched = {id_ for id_, count in per_id.items() if count > 1}
    assert duplicates <= refetched
    assert len({batch_of[id_] for id_ in refetched}) <= reclaimed
    assert stats["hydra/prices/ids_redelivered"] <= reclaimed * size
    # the invalid messages, and nothing else, are dead-lettered, with the reason
    entries = broker.deadletters()
    assert sorted(entry.payload for entry in entries) == sorted(invalid)
    assert {entry.reason for entry in entries} == {"invalid_message"}
    assert all(entry.source == broker.key and entry.error for entry in entries)
    state = broker.state()
    assert (state["messages_ready"], state["messages_unacknowledged"]) == (0, 0)
    assert state["durable"] is True
    for name in ("victim", "survivor"):
        assert rabbitmq_server.password not in (tmp_path / f"{name}.log").read_text()


def test_graceful_stop_gives_back_exactly_what_was_not_fetched(
    tmp_path: Path, rabbitmq_server: RabbitMQServer
) -> None:
    broker = Broker(rabbitmq_server)
    ids = IDS[:300]
    broker.push(batches(ids, 20, "stop"))
    with SandboxServer(delay_seconds=0.02) as sandbox:
        first = start_worker(tmp_path, "first", broker, sandbox.url_template)
        try:
            wait_until_stored(first, tmp_path, "first", 40)
            first.send_signal(signal.SIGINT)
            assert first.wait(60) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            stop_all(first)
        assert broker.state()["messages_unacknowledged"] == 0  # nothing left held
        second = start_worker(tmp_path, "second", broker, sandbox.url_template)
        try:
            assert second.wait(120) == 0, (tmp_path / "second.log").read_text()[-3000:]
        finally:
            stop_all(second)
        per_id = sandbox.stats()["per_id"]
    rows = [
        row["id"] for name in ("first", "second") for row in read_jsonl(tmp_path / f"{name}.jsonl")
    ]
    assert sorted(rows) == sorted(ids)  # every ID stored exactly once
    assert set(per_id.values()) == {1}  # and fetched exactly once: released from checkpoints
    assert 40 <= len(read_jsonl(tmp_path / "first.jsonl")) < len(ids)
    stats = read_summary(tmp_path / "second.summary.json")["stats"]
    assert stats.get("hydra/queue/redelivered", 0) == 0  # a stop is not a death
    assert broker.deadletters() == []


def test_ids_argument_pushes_to_rabbitmq_and_refusals_wait_in_delay_queues(
    tmp_path: Path, rabbitmq_server: RabbitMQServer
) -> None:
    broker = Broker(rabbitmq_server)
    ids = [f"p{n}" for n in range(120)]
    with SandboxServer(refuse_rate=0.05, seed=3) as sandbox:
        log = run_worker(
            "-a", f"ids={','.join(ids)}", "-a", f"url_template={sandbox.url_template}",
            **broker.settings(), HYDRA_IDLE_CLOSE_SECONDS=3, HYDRA_ACK_INTERVAL_SECONDS=0.2,
            HYDRA_BATCH_MAX_ATTEMPTS=50,
            HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
            HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
        )  # fmt: skip
        counts = sandbox.stats()
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(row["id"] for row in rows) == sorted(ids)  # each exactly once
    assert counts["refused"] > 0  # remainders went through the delay queue and came back
    assert counts["requests"] == len(ids) + counts["refused"]
    stats = read_summary(tmp_path / "summary.json")["stats"]
    assert stats["hydra/prices/batches_stopped"] == counts["refused"]
    assert f"queue {broker.key}" in log and "amqp://hydra:***@" in log
    assert rabbitmq_server.password not in log
    queues = rabbitmq_server.queues()
    assert any(name.startswith(f"{broker.key}:delay:") for name in queues)
    assert queues[broker.key]["messages_ready"] == 0
    assert broker.deadletters() == []


def test_a_cut_connection_costs_a_worker_only_repeats(
    tmp_path: Path, rabbitmq_server: RabbitMQServer
) -> None:
    """The broker drops the worker's connection mid-run (a network cut, a broker
    restart): the worker reconnects and goes on; the messages it held come back to it
    and nothing is lost, nothing dead-lettered."""
    broker = Broker(rabbitmq_server)
    ids = IDS[:400]
    broker.push(batches(ids, 20, "cut"))
    with SandboxServer(delay_seconds=0.01) as sandbox:
        worker = start_worker(tmp_path, "worker", broker, sandbox.url_template)
        try:
            wait_until_stored(worker, tmp_path, "worker", 100)
            rabbitmq_server.close_connections()
            assert worker.wait(120) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            stop_all(worker)
    stored = [row["id"] for row in read_jsonl(tmp_path / "worker.jsonl")]
    assert set(stored) == set(ids)
    assert len(stored) - len(set(stored)) <= PREFETCH * 20  # at most what it held, again
    stats = read_summary(tmp_path / "worker.summary.json")["stats"]
    assert 1 <= stats["hydra/queue/reclaimed"] <= PREFETCH
    assert stats.get("hydra/queue/lease_lost", 0) + stats.get("hydra/queue/ack_lease_lost", 0)
    assert broker.deadletters() == []
    state = broker.state()
    assert (state["messages_ready"], state["messages_unacknowledged"]) == (0, 0)
