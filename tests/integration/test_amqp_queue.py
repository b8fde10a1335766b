"""The RabbitMQ queue against a real broker: the lease is the unacked delivery, follow-ups
are confirmed before the ack, a dead channel gives its messages back, poison messages are
counted (classic and quorum queues), retries wait in TTL queues, dead letters are entries
in a durable queue that ``scrapy deadletter`` lists."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import pytest

from crawlers.config import HydraConfig
from crawlers.deadletters import StoredEntry, open_store
from crawlers.models import DeadLetterEntry
from crawlers.queues import Acknowledgement, Checkpoint, Requeue, Route
from crawlers.queues.amqp import (
    DELAY_GRID,
    DUE_HEADER,
    AmqpQueue,
    PublishError,
    delay_bucket,
    split_url,
    url_problems,
)
from crawlers.queues.amqp_deadletters import AmqpDeadLetterStore
from tests.conftest import ROOT, worker_env
from tests.rabbitmqfixtures import RabbitMQServer, rabbitmq_server
from tests.servers import free_port

pytestmark = pytest.mark.integration

__all__ = ["rabbitmq_server"]  # the fixture, imported for pytest

Scenario = Callable[..., Awaitable[None]]


@pytest.fixture
def names() -> dict[str, str]:
    """Queue names of one test: its own, so tests never see each other's messages."""
    tag = secrets.token_hex(4)
    return {"key": f"hydra:test:{tag}:batches", "deadletter": f"hydra:test:{tag}:deadletter"}


class Harness:
    def __init__(self, server: RabbitMQServer, names: dict[str, str]) -> None:
        self.server = server
        self.key = names["key"]
        self.deadletter = names["deadletter"]

    def queue(self, worker: str = "w1", url: str = "", **options: Any) -> AmqpQueue:
        return AmqpQueue(
            url or self.server.url,
            self.key,
            deadletter_key=self.deadletter,
            worker_id=worker,
            **options,
        )

    def run(self, scenario: Scenario, *queues: AmqpQueue) -> None:
        async def main() -> None:
            try:
                for queue in queues:
                    await queue.open()
                await scenario(*queues)
            finally:
                for queue in queues:
                    await queue.close()

        asyncio.run(main())

    def queues(self) -> dict[str, dict[str, Any]]:
        return self.server.queues()

    def raw(self, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Every message in ``name``, taken for good."""
        return asyncio.run(self.take(name))

    async def take(self, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        connection = await aio_pika.connect(self.server.url)
        try:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return []
            taken = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                taken.append(message)
            return taken
        finally:
            await connection.close()

    def arguments(self, name: str) -> dict[str, Any]:
        """``x-...`` arguments of a queue, by name (``rabbitmqctl`` gives name, type, value)."""
        return {argument[0]: argument[-1] for argument in self.queues()[name]["arguments"]}

    def deadletters(self) -> list[DeadLetterEntry]:
        return [DeadLetterEntry.model_validate_json(m.body) for m in self.raw(self.deadletter)]


@pytest.fixture
def harness(rabbitmq_server: RabbitMQServer, names: dict[str, str]) -> Harness:
    return Harness(rabbitmq_server, names)


def dead_letter(payload: str, reason: str = "invalid_message") -> str:
    entry = DeadLetterEntry.build(
        reason=reason,  # type: ignore[arg-type]
        error="bad message",
        source="hydra:test",
        payload=payload,
    )
    return entry.model_dump_json()


async def claim_all(queue: AmqpQueue, want: int, limit: int = 100, wait: float = 10) -> list[Any]:
    """Claim until ``want`` deliveries came (the broker pushes asynchronously)."""
    got: list[Any] = []
    deadline = time.monotonic() + wait
    while len(got) < want:
        try:
            result = await queue.claim(limit - len(got))
        except Exception:  # a cut connection: the ledger retries, so do we
            await asyncio.sleep(0.05)
            continue
        got += result.deliveries
        if len(got) >= want:
            break
        assert time.monotonic() < deadline, f"only {len(got)} of {want} deliveries came"
        await asyncio.sleep(0.02)
    return got


async def nothing_comes(queue: AmqpQueue, seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not (await queue.claim(10)).deliveries
        await asyncio.sleep(0.02)


# -- the contract ---------------------------------------------------------------------


def test_push_claim_ack_with_durable_queue_and_persistent_messages(harness: Harness) -> None:
    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["a", "b", "c"])
        deliveries = await claim_all(queue, 3)
        assert [d.payload for d in deliveries] == ["a", "b", "c"]
        assert len({d.lease_id for d in deliveries}) == 3
        assert len({d.message_id for d in deliveries}) == 3
        assert all(d.redeliveries == 0 and d.source == harness.key for d in deliveries)
        assert await queue.renew([d.lease_id for d in deliveries]) == []
        acked = await queue.ack([Acknowledgement(d.lease_id) for d in deliveries[:2]])
        assert acked == [True, True]
        assert await queue.ack([Acknowledgement(deliveries[0].lease_id)]) == [True]  # retried
        state = harness.queues()[harness.key]
        assert (state["messages_ready"], state["messages_unacknowledged"]) == (0, 1)
        assert await queue.depth() == 0

    harness.run(scenario, harness.queue())
    state = harness.queues()[harness.key]
    assert state["durable"] is True and state["type"] == "classic"
    # closing gave "c" back (unacked, never released): still there, persistent
    (message,) = harness.raw(harness.key)
    assert message.body == b"c" and message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


def test_prefetch_bounds_what_a_worker_holds(harness: Harness) -> None:
    async def scenario(first: AmqpQueue, second: AmqpQueue) -> None:
        await first.push([str(n) for n in range(6)])
        held = await claim_all(first, 2)
        await nothing_comes(first)  # 2 unacked: the broker sends no more
        others = await claim_all(second, 2)
        assert {d.payload for d in held} | {d.payload for d in others} == {"0", "1", "2", "3"}
        await first.ack([Acknowledgement(held[0].lease_id)])
        (more,) = await claim_all(first, 1)
        assert more.payload in {"4", "5"}

    harness.run(scenario, harness.queue(prefetch=2), harness.queue("w2", prefetch=2))


def test_a_dead_channel_gives_its_messages_to_another_worker(harness: Harness) -> None:
    async def scenario(dying: AmqpQueue, other: AmqpQueue) -> None:
        await dying.push(["m1", "m2"])
        held = await claim_all(dying, 2)
        await nothing_comes(other)
        harness.server.close_connections()  # the broker's side of a dead worker
        deliveries = await claim_all(other, 2)
        assert sorted(d.payload for d in deliveries) == ["m1", "m2"]
        assert {d.message_id for d in deliveries} == {d.message_id for d in held}
        assert all(d.redeliveries == 1 for d in deliveries)
        # the dead channel's leases are lost: renew says so, an ack publishes nothing
        lost = [d.lease_id for d in held]
        await asyncio.sleep(0.2)
        assert await dying.renew(lost) == lost
        ack = Acknowledgement(lost[0], [Requeue("follow-up")], [dead_letter("x")])
        assert await dying.ack([ack]) == [False]
        assert await dying.checkpoint([Checkpoint(lost[1], "resume")]) == [False]
        assert await dying.release(lost) == 0
        await nothing_comes(other)  # no follow-up appeared
        assert await other.ack([Acknowledgement(d.lease_id) for d in deliveries]) == [True] * 2

    harness.run(scenario, harness.queue(), harness.queue("w2"))
    assert harness.raw(harness.deadletter) == []


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_poison_after_max_deliveries_then_dead_lettered(harness: Harness, queue_type: str) -> None:
    url = harness.server.url + f"?queue_type={queue_type}"

    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["poison"])
        seen = []
        for _ in range(3):
            (delivery,) = await claim_all(queue, 1)
            seen.append(delivery)
            harness.server.close_connections()  # its worker dies holding it
            await asyncio.sleep(0.2)
        assert [d.redeliveries for d in seen] == [0, 1, 2]
        (last,) = await claim_all(queue, 1)
        assert last.redeliveries == 3 and last.message_id == seen[0].message_id
        entry = dead_letter(last.payload, "poison")
        assert await queue.ack([Acknowledgement(last.lease_id, deadletter=[entry])]) == [True]
        await nothing_comes(queue)

    harness.run(scenario, harness.queue(url=url, max_deliveries=3))
    queues = harness.queues()
    assert queues[harness.key]["type"] == queue_type
    assert queues[harness.deadletter]["type"] == queue_type
    (entry,) = harness.deadletters()
    assert (entry.reason, entry.payload) == ("poison", "poison")


def test_release_gives_back_from_the_checkpoint_without_a_redelivery(harness: Harness) -> None:
    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["whole", "other"])
        first, second = await claim_all(queue, 2)
        entry = dead_letter("row", "sink_rejected")
        assert await queue.checkpoint([Checkpoint(first.lease_id, "rest", [entry])]) == [True]
        (published,) = await harness.take(harness.deadletter)  # at once, not at the ack
        assert DeadLetterEntry.model_validate_json(published.body).payload == "row"
        assert await queue.release([first.lease_id, second.lease_id]) == 2
        assert await queue.renew([first.lease_id]) == [first.lease_id]
        again = await claim_all(queue, 2)
        assert [(d.payload, d.redeliveries) for d in again] == [("rest", 0), ("other", 0)]
        assert [d.message_id for d in again] == [first.message_id, second.message_id]
        await queue.ack([Acknowledgement(d.lease_id) for d in again])

    harness.run(scenario, harness.queue())


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_requeue_now_and_after_a_delay(harness: Harness, queue_type: str) -> None:
    url = harness.server.url + f"?queue_type={queue_type}"

    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["batch"])
        (delivery,) = await claim_all(queue, 1)
        follow_ups = [Requeue("later", 0.4), Requeue("now", 0)]
        started = time.monotonic()
        assert await queue.ack([Acknowledgement(delivery.lease_id, follow_ups)]) == [True]
        (now,) = await claim_all(queue, 1)
        assert now.payload == "now"
        result = await queue.claim(10)
        assert not result.deliveries and result.delayed == 1
        assert await queue.depth() == 1
        (later,) = await claim_all(queue, 1)
        assert later.payload == "later" and later.redeliveries == 0
        assert 0.35 <= time.monotonic() - started < 3
        await queue.ack([Acknowledgement(now.lease_id), Acknowledgement(later.lease_id)])

    harness.run(scenario, harness.queue(url=url))
    delay_queue = f"{harness.key}:delay:400"
    state = harness.queues()[delay_queue]
    assert state["durable"] is True and state["type"] == queue_type
    expected: dict[str, Any] = {
        "x-message-ttl": 400,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": harness.key,
    }
    if queue_type == "quorum":  # the broker's move back is confirmed internally
        expected |= {
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    assert harness.arguments(delay_queue) == expected


def test_a_queue_deleted_meanwhile_fails_the_ack_which_a_retry_completes(
    harness: Harness,
) -> None:
    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["one", "two"])
        first, second = await claim_all(queue, 2)
        await queue.ack([Acknowledgement(first.lease_id, deadletter=[dead_letter("1")])])
        harness.server.ctl("delete_queue", harness.deadletter)
        ack = Acknowledgement(second.lease_id, deadletter=[dead_letter("2")])
        with pytest.raises(PublishError, match="unroutable"):
            await queue.ack([ack])  # mandatory: not lost silently
        assert await queue.renew([second.lease_id]) == []  # still held, not acked
        assert await queue.ack([ack]) == [True]  # the next round declares it again

    harness.run(scenario, harness.queue())
    assert [entry.payload for entry in harness.deadletters()] == ["2"]


def test_a_release_keeps_the_count_of_a_quorum_queue(harness: Harness) -> None:
    url = harness.server.url + "?queue_type=quorum"

    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["m"])
        await claim_all(queue, 1)
        harness.server.close_connections()
        await asyncio.sleep(0.2)
        (again,) = await claim_all(queue, 1)
        assert again.redeliveries == 1
        await queue.release([again.lease_id])
        (released,) = await claim_all(queue, 1)
        assert released.redeliveries == 1  # the copy carries the broker's count on
        await queue.ack([Acknowledgement(released.lease_id)])

    harness.run(scenario, harness.queue(url=url))


def test_delays_round_up_to_a_grid_and_long_ones_hop() -> None:
    assert delay_bucket(1) == 100
    assert delay_bucket(1000) == 1000 and delay_bucket(1001) == 1500
    assert all(b <= 1.5 * a for a, b in itertools.pairwise(DELAY_GRID))
    assert delay_bucket(10**9) == DELAY_GRID[-1]  # the rest waits again on arrival


def test_a_retry_that_arrives_before_it_is_due_waits_again(harness: Harness) -> None:
    """What a delay beyond the grid does: the message hops until its due time."""

    async def scenario(queue: AmqpQueue) -> None:
        due = int(time.time() * 1000) + 1500
        started = time.monotonic()
        await publish_raw(harness, b"later", headers={DUE_HEADER: due})
        await nothing_comes(queue, 1.0)
        (delivery,) = await claim_all(queue, 1)
        assert delivery.payload == "later"
        assert time.monotonic() - started >= 1.3
        await queue.ack([Acknowledgement(delivery.lease_id)])

    harness.run(scenario, harness.queue())


def test_ack_publishes_dead_letters_with_reason_and_raw_payload(harness: Harness) -> None:
    raw = '{"run_id": "r", "ids": ["1"], "password": "not masked here"}'

    async def scenario(queue: AmqpQueue) -> None:
        await queue.push([raw])
        (delivery,) = await claim_all(queue, 1)
        entry = dead_letter(delivery.payload)
        assert await queue.ack([Acknowledgement(delivery.lease_id, deadletter=[entry])]) == [True]

    harness.run(scenario, harness.queue())
    (message,) = harness.raw(harness.deadletter)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers["x-hydra-reason"] == "invalid_message"
    assert message.content_type == "application/json"
    entry = DeadLetterEntry.model_validate_json(message.body)
    assert message.message_id == entry.id
    assert (entry.reason, entry.error) == ("invalid_message", "bad message")
    assert json.loads(entry.payload)["run_id"] == "r"
    assert harness.queues()[harness.deadletter]["durable"] is True


def test_undecodable_payload_is_flagged(harness: Harness) -> None:
    async def scenario(queue: AmqpQueue) -> None:
        await publish_raw(harness, b"\xff\xfebad")
        (delivery,) = await claim_all(queue, 1)
        assert delivery.undecodable and delivery.payload == "\\xff\\xfebad"
        await queue.release([delivery.lease_id])  # the bytes go back as they were

    harness.run(scenario, harness.queue())
    (message,) = harness.raw(harness.key)
    assert message.body == b"\xff\xfebad"


async def publish_raw(harness: Harness, body: bytes, **properties: Any) -> None:
    """As a producer would: to the queue through the default exchange."""
    connection = await aio_pika.connect(harness.server.url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(harness.key, durable=True)
        message = aio_pika.Message(body, delivery_mode=2, **properties)
        await channel.default_exchange.publish(message, routing_key=harness.key)
    finally:
        await connection.close()


def test_a_producers_message_without_id_keeps_one_identity(harness: Harness) -> None:
    async def scenario(first: AmqpQueue, second: AmqpQueue) -> None:
        await publish_raw(harness, b'{"a": 1}')
        (one,) = await claim_all(first, 1)
        harness.server.close_connections()
        (two,) = await claim_all(second, 1)
        assert one.message_id == two.message_id and two.redeliveries == 1
        await second.ack([Acknowledgement(two.lease_id)])

    harness.run(scenario, harness.queue(), harness.queue("w2"))


def test_close_gives_prefetched_messages_back_without_counting_a_death(harness: Harness) -> None:
    async def fill(queue: AmqpQueue) -> None:
        await queue.push(["p1", "p2", "p3"])
        (taken,) = await claim_all(queue, 1, limit=1)
        await asyncio.sleep(0.3)  # p2, p3 prefetched, never claimed
        await queue.release([taken.lease_id])

    harness.run(fill, harness.queue(prefetch=3))

    async def drain(queue: AmqpQueue) -> None:
        deliveries = await claim_all(queue, 3)
        assert sorted(d.payload for d in deliveries) == ["p1", "p2", "p3"]
        assert all(d.redeliveries == 0 for d in deliveries)
        await queue.ack([Acknowledgement(d.lease_id) for d in deliveries])

    harness.run(drain, harness.queue("w2"))


def test_a_shared_queue_routes_each_type_to_its_workers(harness: Harness) -> None:
    def route(*wanted: str) -> Route:
        return Route("source_type", ("ftp", "s3"), frozenset(wanted))

    async def scenario(ftp: AmqpQueue, s3: AmqpQueue) -> None:
        messages = [json.dumps({"source_type": kind, "n": n}) for n, kind in enumerate("fsfs")]
        messages = [m.replace('"f"', '"ftp"').replace('"s"', '"s3"') for m in messages]
        await ftp.push([*messages, "not json"])
        ftp_got = await claim_all(ftp, 3)  # its two, and the unreadable one
        s3_got = await claim_all(s3, 2)
        assert sorted(json.loads(d.payload)["n"] for d in s3_got) == [1, 3]
        readable = [d for d in ftp_got if d.payload != "not json"]
        assert sorted(json.loads(d.payload)["n"] for d in readable) == [0, 2]
        assert len(ftp_got) == 3
        await ftp.ack([Acknowledgement(d.lease_id) for d in ftp_got])
        await s3.ack([Acknowledgement(d.lease_id) for d in s3_got])
        assert await ftp.depth() == 0

    harness.run(
        scenario,
        harness.queue(route=route("ftp")),
        harness.queue("w2", route=route("s3")),
    )
    assert f"{harness.key}:ready:s3" in harness.queues()


def test_unreachable_broker_raises_from_claim_not_open(names: dict[str, str]) -> None:
    url = f"amqp://hydra:s3cret-pw@127.0.0.1:{free_port()}/"
    queue = AmqpQueue(url, names["key"], deadletter_key=names["deadletter"], worker_id="w")

    async def scenario() -> None:
        await queue.open()
        with pytest.raises(OSError):
            await queue.claim(1)
        await queue.close()

    asyncio.run(scenario())
    assert "s3cret-pw" not in queue.describe() + queue.describe_deadletter()


def test_url_options_are_ours_and_checked() -> None:
    url, options = split_url("amqp://u:p@h:5672/v?queue_type=quorum&heartbeat=30")
    assert (url, options) == ("amqp://u:p@h:5672/v?heartbeat=30", {"queue_type": "quorum"})
    assert url_problems("amqp://u:p@h/v") == []
    (problem,) = url_problems("amqp://u:secret@h/v?queue_type=stream")
    assert "queue_type 'stream'" in problem and "secret" not in problem


# -- scrapy deadletter ----------------------------------------------------------------


def test_deadletter_store_lists_and_removes_without_losing_the_rest(harness: Harness) -> None:
    entries = [dead_letter(f"payload-{n}") for n in range(3)]

    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["m"])
        (delivery,) = await claim_all(queue, 1)
        await queue.ack([Acknowledgement(delivery.lease_id, deadletter=entries)])

    harness.run(scenario, harness.queue())
    store = AmqpDeadLetterStore(harness.server.url, harness.deadletter)
    listed = store.read()
    assert sorted(s.entry.payload for s in listed if s.entry) == [f"payload-{n}" for n in range(3)]
    assert store.read() == listed  # reading took nothing away
    target = next(s for s in listed if s.entry and s.entry.payload == "payload-1")
    assert store.remove([target, target]) == [True, False]
    assert sorted(s.entry.payload for s in store.read() if s.entry) == ["payload-0", "payload-2"]
    gone = StoredEntry(1, b"never stored", None)
    assert store.remove([gone]) == [False]
    assert AmqpDeadLetterStore(harness.server.url, "hydra:no-such-queue").read() == []


def test_scrapy_deadletter_list_reads_the_queue(harness: Harness) -> None:
    async def scenario(queue: AmqpQueue) -> None:
        await queue.push(["m"])
        (delivery,) = await claim_all(queue, 1)
        entry = dead_letter("the payload")
        await queue.ack([Acknowledgement(delivery.lease_id, deadletter=[entry])])

    harness.run(scenario, harness.queue())
    env = worker_env(HYDRA_QUEUE_URL=harness.server.url, HYDRA_DEADLETTER_KEY=harness.deadletter)
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "deadletter", "list", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["reason"] == "invalid_message"
    assert f"1 entry in amqp://hydra:***@127.0.0.1:{harness.server.port}/ queue" in done.stderr
    assert harness.server.password not in done.stdout + done.stderr
    assert isinstance(open_store(HydraConfig(queue_url=harness.server.url)), AmqpDeadLetterStore)
