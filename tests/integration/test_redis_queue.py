"""The Redis lease queue against a real redis-server: leases, renewal, reclaim, atomic acks,
checkpoints, retries, dead-letter transfer and Redis Cluster key placement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from crawlers.models import DeadLetterEntry
from crawlers.queues import Acknowledgement, Checkpoint, Delivery, Requeue, Route
from crawlers.queues.redis import RedisLeaseQueue
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.integration

KEY = "hydra:prices:batches"
DEADLETTER = "hydra:deadletter"
READY, DELAYED, LEASES, HELD, OUTBOX = (
    f"{{{KEY}}}:{name}" for name in ("ready", "delayed", "leases", "held", "deadletter-outbox")
)
TRANSFERRED = f"{{{DEADLETTER}}}:ids"
LEASE, PAST_LEASE = 0.3, 0.45  # a short lease, and a sleep just past it
DEAD_AND_ALIVE = (("w1", LEASE), ("w2", 30.0))

Runner = Callable[..., None]


def make_queue(
    url: str, worker: str = "w1", lease: float = 30.0, key: str = KEY
) -> RedisLeaseQueue:
    return RedisLeaseQueue(
        url, key, deadletter_key=DEADLETTER, lease_seconds=lease, worker_id=worker
    )


@pytest.fixture
def run(redis_server: RedisServer, redis_client: redis.Redis) -> Runner:
    """``run(scenario, *workers)``: opens a queue per ``(worker_id, lease_seconds)``
    (default ``("w1", 30.0)``), runs ``scenario(*queues)``, closes them."""

    def runner(scenario: Callable[..., Awaitable[None]], *workers: tuple[str, float]) -> None:
        async def main() -> None:
            specs = workers or (("w1", 30.0),)
            queues = [make_queue(redis_server.url, worker, lease) for worker, lease in specs]
            try:
                for queue in queues:
                    await queue.open()
                await scenario(*queues)
            finally:
                for queue in queues:
                    await queue.close()

        asyncio.run(main())

    return runner


def envelope(raw: object) -> tuple[str, int, str]:
    """``(message id, deliveries, payload)`` of an envelope stored in a helper key."""
    assert isinstance(raw, str)
    message_id, deliveries, payload = raw.split("\n", 2)
    return message_id, int(deliveries), payload


def payloads(raws: list[Any]) -> list[str]:
    return [envelope(raw)[2] for raw in raws]


def dead_letter(payload: str) -> str:
    entry = DeadLetterEntry.build(reason="invalid_message", error="x", source=KEY, payload=payload)
    return entry.model_dump_json()


def summary(deliveries: list[Delivery]) -> list[tuple[str, int]]:
    return [(delivery.payload, delivery.redeliveries) for delivery in deliveries]


async def claim_one(queue: RedisLeaseQueue) -> Delivery:
    (delivery,) = (await queue.claim(1)).deliveries
    return delivery


def assert_no_follow_ups(client: redis.Redis) -> None:
    assert (client.llen(READY), client.zcard(DELAYED)) == (0, 0)
    assert (client.llen(OUTBOX), client.llen(DEADLETTER)) == (0, 0)


def test_claim_leases_in_fifo_order_and_ack_removes(run: Runner, redis_client: redis.Redis) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1", "m2", "m3"])
        result = await queue.claim(2)
        assert summary(result.deliveries) == [("m1", 0), ("m2", 0)]
        assert (result.reclaimed, result.delayed) == (0, 0)
        first, second = result.deliveries
        assert redis_client.lrange(KEY, 0, -1) == ["m3"]
        held = redis_client.hgetall(HELD)
        for delivery, payload in ((first, "m1"), (second, "m2")):
            assert (delivery.source, delivery.lease_id[:3]) == (KEY, "w1:")
            assert not delivery.undecodable
            assert envelope(held[delivery.lease_id]) == (delivery.message_id, 0, payload)
            assert redis_client.zscore(LEASES, delivery.lease_id) is not None
        assert first.message_id and first.message_id != second.message_id
        assert await queue.ack([Acknowledgement(first.lease_id)]) == [True]
        assert redis_client.zrange(LEASES, 0, -1) == [second.lease_id]
        assert list(redis_client.hgetall(HELD)) == [second.lease_id]
        assert redis_client.lrange(KEY, 0, -1) == ["m3"]
        assert_no_follow_ups(redis_client)

    run(scenario)


def test_helper_keys_share_the_hash_slot_of_their_list() -> None:
    queue = make_queue("redis://127.0.0.1:1/0")
    helpers = [queue.ready_key, queue.delayed_key, queue.leases_key, queue.held_key]
    assert [*helpers, queue.outbox_key] == [READY, DELAYED, LEASES, HELD, OUTBOX]
    for key in (READY, DELAYED, LEASES, HELD, OUTBOX):
        assert key_slot(key.encode()) == key_slot(KEY.encode()), key
    assert queue.transferred_key == TRANSFERRED
    assert key_slot(TRANSFERRED.encode()) == key_slot(DEADLETTER.encode())


def test_helper_keys_of_a_hash_tagged_key_share_its_slot() -> None:
    queue = make_queue("redis://127.0.0.1:1/0", key="{hydra}:prices:batches")
    for key in (queue.ready_key, queue.leases_key, queue.held_key, queue.outbox_key):
        assert key_slot(key.encode()) == key_slot(b"hydra"), key


def test_renewal_keeps_a_lease_past_its_deadline(run: Runner) -> None:
    async def scenario(holder: RedisLeaseQueue, other: RedisLeaseQueue) -> None:
        await holder.push(["m1"])
        delivery = await claim_one(holder)
        await asyncio.sleep(0.6)
        assert await holder.renew([delivery.lease_id, "w1:unknown"]) == ["w1:unknown"]
        await asyncio.sleep(0.6)  # 1.2 s after the claim: past the original deadline
        result = await other.claim(5)
        assert (result.deliveries, result.reclaimed) == ([], 0)
        assert await holder.renew([delivery.lease_id]) == []
        assert await holder.ack([Acknowledgement(delivery.lease_id)]) == [True]

    run(scenario, ("w1", 1.0), ("w2", 1.0))


def test_expired_lease_of_another_worker_is_reclaimed_first(run: Runner) -> None:
    async def scenario(dead: RedisLeaseQueue, alive: RedisLeaseQueue) -> None:
        await dead.push(["m1", "m2"])
        lost, done = (await dead.claim(2)).deliveries
        assert await dead.ack([Acknowledgement(done.lease_id, [Requeue("r")])]) == [True]
        await dead.push(["m3"])
        await asyncio.sleep(PAST_LEASE)
        result = await alive.claim(3)
        assert result.reclaimed == 1
        assert summary(result.deliveries) == [("m1", 1), ("r", 0), ("m3", 0)]
        assert result.deliveries[0].message_id == lost.message_id
        assert result.deliveries[0].lease_id.startswith("w2:")
        assert await dead.renew([lost.lease_id]) == [lost.lease_id]

    run(scenario, *DEAD_AND_ALIVE)


def test_a_worker_never_reclaims_its_own_expired_leases(
    run: Runner, redis_client: redis.Redis
) -> None:
    async def scenario(own: RedisLeaseQueue, same: RedisLeaseQueue, other: RedisLeaseQueue) -> None:
        await own.push(["m1"])
        held = await claim_one(own)
        await own.push(["m2"])
        await asyncio.sleep(PAST_LEASE)
        result = await own.claim(5)
        assert (summary(result.deliveries), result.reclaimed) == ([("m2", 0)], 0)
        assert (await same.claim(5)).deliveries == []  # another queue object, same worker id
        assert redis_client.zscore(LEASES, held.lease_id) is not None
        assert held.lease_id in redis_client.hkeys(HELD)
        taken = await other.claim(5)
        assert (summary(taken.deliveries), taken.reclaimed) == ([("m1", 1)], 1)

    run(scenario, ("w1", LEASE), ("w1", LEASE), ("w2", 30.0))


def test_lease_ids_are_unique_across_workers_and_flushall(
    run: Runner, redis_client: redis.Redis
) -> None:
    async def scenario(first: RedisLeaseQueue, second: RedisLeaseQueue) -> None:
        await first.push(["a", "b"])
        one, two = await claim_one(first), await claim_one(second)
        assert (one.lease_id[:3], two.lease_id[:3]) == ("w1:", "w2:")
        redis_client.flushall()
        await first.push(["a"])
        after = await claim_one(first)
        assert after.lease_id.startswith("w1:")
        assert after.lease_id != one.lease_id
        assert after.message_id not in (one.message_id, two.message_id)

    run(scenario, ("w1", 30.0), ("w2", 30.0))


def test_requeue_now_goes_first_and_delayed_waits(run: Runner, redis_client: redis.Redis) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1", "new"])
        original = await claim_one(queue)
        requeue = [Requeue("now"), Requeue("later", delay=0.5)]
        assert await queue.ack([Acknowledgement(original.lease_id, requeue)]) == [True]
        assert payloads(redis_client.lrange(READY, 0, -1)) == ["now"]
        assert payloads(redis_client.zrange(DELAYED, 0, -1)) == ["later"]
        result = await queue.claim(1)
        assert (summary(result.deliveries), result.delayed) == ([("now", 0)], 1)
        now = result.deliveries[0]
        assert now.message_id != original.message_id
        result = await queue.claim(5)
        assert (summary(result.deliveries), result.delayed) == ([("new", 0)], 1)
        await asyncio.sleep(0.6)
        result = await queue.claim(5)
        assert (summary(result.deliveries), result.delayed) == ([("later", 0)], 0)
        assert result.deliveries[0].message_id not in (original.message_id, now.message_id)

    run(scenario)


def test_ack_of_a_lost_lease_publishes_no_follow_ups(
    run: Runner, redis_client: redis.Redis
) -> None:
    async def scenario(dead: RedisLeaseQueue, alive: RedisLeaseQueue) -> None:
        await dead.push(["m1"])
        lost = await claim_one(dead)
        await asyncio.sleep(PAST_LEASE)
        taken = await claim_one(alive)
        follow_ups = [Requeue("r"), Requeue("r-later", 5)], [dead_letter("p")]
        assert await dead.ack([Acknowledgement(lost.lease_id, *follow_ups)]) == [False]
        assert_no_follow_ups(redis_client)
        acks = [Acknowledgement(taken.lease_id, [Requeue("ok")])] * 2
        assert await alive.ack(acks) == [True, False]  # the second one: already acked
        assert payloads(redis_client.lrange(READY, 0, -1)) == ["ok"]

    run(scenario, *DEAD_AND_ALIVE)


def test_checkpoint_is_where_a_message_resumes(run: Runner, redis_client: redis.Redis) -> None:
    async def scenario(dead: RedisLeaseQueue, alive: RedisLeaseQueue) -> None:
        await dead.push(["m1"])
        first = await claim_one(dead)
        assert await dead.checkpoint([Checkpoint(first.lease_id, "cp1")]) == [True]
        assert envelope(redis_client.hget(HELD, first.lease_id))[2] == "cp1"
        assert await dead.checkpoint([Checkpoint(first.lease_id)]) == [True]  # keeps cp1
        assert await dead.release([first.lease_id]) == 1
        second = await claim_one(dead)
        assert (second.payload, second.message_id) == ("cp1", first.message_id)
        assert second.redeliveries == 0
        assert await dead.checkpoint([Checkpoint(second.lease_id, "cp2")]) == [True]
        await asyncio.sleep(PAST_LEASE)
        third = await claim_one(alive)  # reclaimed from the dead worker
        assert (third.payload, third.message_id) == ("cp2", first.message_id)
        assert third.redeliveries == 1
        stale = Checkpoint(second.lease_id, "stale", [dead_letter("p")])
        assert await dead.checkpoint([stale]) == [False]
        assert envelope(redis_client.hget(HELD, third.lease_id))[2] == "cp2"
        assert_no_follow_ups(redis_client)

    run(scenario, *DEAD_AND_ALIVE)


def test_release_gives_back_at_the_head_without_a_redelivery(run: Runner) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["a", "b"])
        a, b = (await queue.claim(2)).deliveries
        assert await queue.ack([Acknowledgement(a.lease_id, [Requeue("r")])]) == [True]
        await queue.push(["c"])
        assert await queue.release([b.lease_id]) == 1
        assert await queue.release([b.lease_id, "w1:unknown"]) == 0
        result = await queue.claim(3)
        assert summary(result.deliveries) == [("b", 0), ("r", 0), ("c", 0)]
        assert result.deliveries[0].message_id == b.message_id

    run(scenario)


def test_release_of_several_keeps_their_order(run: Runner) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["a", "b", "c"])
        held = (await queue.claim(3)).deliveries
        assert await queue.release([d.lease_id for d in held]) == 3
        assert [d.payload for d in (await queue.claim(3)).deliveries] == ["a", "b", "c"]

    run(scenario)


def test_dead_letters_of_checkpoint_and_ack_reach_the_list(
    run: Runner, redis_client: redis.Redis
) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1"])
        lease_id = (await claim_one(queue)).lease_id
        early, late = dead_letter("early"), dead_letter("late")
        assert await queue.checkpoint([Checkpoint(lease_id, None, [early])]) == [True]
        assert (redis_client.lrange(DEADLETTER, 0, -1), redis_client.llen(OUTBOX)) == ([early], 0)
        assert await queue.ack([Acknowledgement(lease_id, (), [late])]) == [True]
        assert redis_client.lrange(DEADLETTER, 0, -1) == [early, late]
        assert redis_client.llen(OUTBOX) == 0
        ids = {json.loads(entry)["id"] for entry in (early, late)}
        assert set(redis_client.zrange(TRANSFERRED, 0, -1)) == ids
        # every key written is in the slot of the queue's list or of the dead-letter list
        slots = {key_slot(KEY.encode()), key_slot(DEADLETTER.encode())}
        assert {key_slot(str(key).encode()) for key in redis_client.keys("*")} <= slots

    run(scenario)


def test_transfer_repeated_after_a_crash_does_not_duplicate(
    run: Runner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = dead_letter("p")

    def crash(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("died between the move and the outbox cleanup")

    async def scenario(queue: RedisLeaseQueue) -> None:
        redis_client.rpush(OUTBOX, entry)
        with monkeypatch.context() as patch:
            patch.setattr(queue.client, "pipeline", crash)
            with pytest.raises(redis.exceptions.ConnectionError):
                await queue.transfer_deadletters()
        assert redis_client.lrange(DEADLETTER, 0, -1) == [entry]
        assert redis_client.zrange(TRANSFERRED, 0, -1) == [json.loads(entry)["id"]]
        assert redis_client.lrange(OUTBOX, 0, -1) == [entry]
        assert await queue.transfer_deadletters() == 0
        redis_client.rpush(OUTBOX, entry, entry)  # e.g. a retried checkpoint
        await queue.recover()
        assert redis_client.lrange(DEADLETTER, 0, -1) == [entry]
        assert redis_client.llen(OUTBOX) == 0

    run(scenario)


def test_concurrent_transfers_lose_no_entry(
    run: Runner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [dead_letter(f"p{n}") for n in range(22)]

    async def scenario(a: RedisLeaseQueue, b: RedisLeaseQueue) -> None:
        lrange, arrivals = a.client.lrange, [entries[1]]

        async def read_then_arrival(*args: Any) -> Any:
            reply = await lrange(*args)
            if arrivals:  # an entry arrives between a's read and a's cleanup
                await a.client.rpush(OUTBOX, arrivals.pop())
            return reply

        redis_client.rpush(OUTBOX, entries[0])
        monkeypatch.setattr(a.client, "lrange", read_then_arrival)
        await asyncio.gather(a.transfer_deadletters(), b.transfer_deadletters())
        assert redis_client.lrange(DEADLETTER, 0, -1) == entries[:2]
        for entry in entries[2:]:  # more arrivals racing with both transfers
            push = a.client.rpush(OUTBOX, entry)
            await asyncio.gather(push, a.transfer_deadletters(), b.transfer_deadletters())
        await a.transfer_deadletters()
        assert redis_client.lrange(DEADLETTER, 0, -1) == entries
        assert redis_client.llen(OUTBOX) == 0

    run(scenario, ("w1", 30.0), ("w2", 30.0))


def test_undecodable_payload_is_flagged_and_does_not_wedge(
    run: Runner, redis_server: RedisServer
) -> None:
    raw_client = redis.Redis.from_url(redis_server.url)  # decode_responses=False
    try:
        raw_client.rpush(KEY, b"\xff\xfebad\n2", b"good")
    finally:
        raw_client.close()

    async def scenario(queue: RedisLeaseQueue) -> None:
        bad = await claim_one(queue)
        assert (bad.undecodable, bad.payload) == (True, "\\xff\\xfebad\n2")
        good = await claim_one(queue)
        assert (good.undecodable, good.payload) == (False, "good")
        assert await queue.ack([Acknowledgement(bad.lease_id)]) == [True]
        assert await queue.release([good.lease_id]) == 1
        assert (await claim_one(queue)).payload == "good"

    run(scenario)


def test_depth_counts_waiting_messages(run: Runner) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        assert await queue.depth() == 0
        await queue.push(["a", "b", "c"])
        delivery = await claim_one(queue)
        assert await queue.depth() == 2  # a leased message is not waiting
        requeue = [Requeue("now"), Requeue("later", 60), Requeue("later2", 60)]
        assert await queue.ack([Acknowledgement(delivery.lease_id, requeue)]) == [True]
        assert await queue.depth() == 2 + 1 + 2

    run(scenario)


def test_server_warnings_about_missing_persistence(run: Runner, redis_client: redis.Redis) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        (warning,) = await queue.server_warnings()  # the fixture's server: --save '' no AOF
        assert "neither AOF nor RDB" in warning
        assert queue.url.removeprefix("redis://").removesuffix("/0") in warning
        for name, value, default in (("appendonly", "yes", "no"), ("save", "3600 1", "")):
            redis_client.config_set(name, value)
            try:
                assert await queue.server_warnings() == [], name
            finally:
                redis_client.config_set(name, default)

    run(scenario)


def test_unreachable_server_raises_from_claim_not_open() -> None:
    async def scenario() -> None:
        queue = make_queue(f"redis://127.0.0.1:{free_port()}/0")
        await queue.open()  # no network I/O
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await queue.claim(1)
        finally:
            await queue.close()

    asyncio.run(scenario())


def test_an_own_lease_forgotten_for_a_whole_further_period_is_reclaimed(
    run: Runner,
) -> None:
    """A worker that lost track of a lease (a claim reply lost) must not hold it for ever."""

    async def scenario(own: RedisLeaseQueue) -> None:
        await own.push(["m1"])
        await claim_one(own)
        await asyncio.sleep(PAST_LEASE)
        assert (await own.claim(5)).deliveries == []  # just expired: maybe still held
        await asyncio.sleep(LEASE + 0.1)
        taken = await own.claim(5)
        assert (summary(taken.deliveries), taken.reclaimed) == ([("m1", 1)], 1)

    run(scenario, ("w1", LEASE))


def test_a_failing_dead_letter_move_never_costs_claimed_messages(
    run: Runner, redis_client: redis.Redis
) -> None:
    """Moving dead letters to a list of the wrong type fails; acks stand, and claims
    still hand out what they leased (the move is retried before the next claim)."""

    async def scenario(queue: RedisLeaseQueue) -> None:
        redis_client.set(DEADLETTER, "not a list")
        await queue.push(["m1", "m2"])
        first = await claim_one(queue)
        assert await queue.ack([Acknowledgement(first.lease_id, (), [dead_letter("m1")])]) == [True]
        assert redis_client.llen(OUTBOX) == 1  # kept for later, not lost
        second = await queue.claim(5)
        assert summary(second.deliveries) == [("m2", 0)]
        redis_client.delete(DEADLETTER)
        await queue.claim(5)  # tidies first: the pending move now succeeds
        assert redis_client.llen(DEADLETTER) == 1 and redis_client.llen(OUTBOX) == 0

    run(scenario)


def test_leases_of_a_claim_whose_reply_was_lost_are_given_back(
    run: Runner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(queue: RedisLeaseQueue) -> None:
        await queue.push(["m1"])
        real_claim = queue._claim

        async def lost_reply(*args: Any, **kwargs: Any) -> Any:
            await real_claim(*args, **kwargs)  # the script ran on the server...
            raise redis.exceptions.ConnectionError("connection reset")  # ...reply lost

        monkeypatch.setattr(queue, "_claim", lost_reply)
        with pytest.raises(redis.exceptions.ConnectionError):
            await queue.claim(1)
        assert redis_client.zcard(LEASES) == 1  # leased to nobody who knows it
        monkeypatch.setattr(queue, "_claim", real_claim)
        result = await queue.claim(1)
        assert summary(result.deliveries) == [("m1", 0)]  # given back and claimed again
        assert queue.released_unsure == 1

    run(scenario)


def test_a_shared_queue_routes_each_type_to_its_workers(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Fetch tasks of every source type share one public list; a claim takes the
    types its worker wants and moves the others to their typed ready lists."""

    async def scenario() -> None:
        types = ("s3", "ftp", "html", "api")

        def typed(worker: str, wanted: str) -> RedisLeaseQueue:
            route = Route("source_type", types, frozenset({wanted}))
            return RedisLeaseQueue(
                redis_server.url, "hydra:fetch:tasks", deadletter_key=DEADLETTER,
                lease_seconds=30, worker_id=worker, route=route,
            )  # fmt: skip

        s3, ftp = typed("s3-worker", "s3"), typed("ftp-worker", "ftp")
        for queue in (s3, ftp):
            await queue.open()
        try:
            messages = [
                json.dumps({"job_id": "a", "source_type": "s3"}),
                json.dumps({"job_id": "b", "source_type": "ftp"}),
                "not json",
                json.dumps({"job_id": "c", "source_type": "gopher"}),
                json.dumps({"job_id": "d", "source_type": "html"}),
                json.dumps({"job_id": "e", "source_type": "s3"}),
            ]
            await s3.push(messages)
            taken = await s3.claim(10)
            # its own type, and what nobody could route (to be dead-lettered by it)
            assert [d.payload for d in taken.deliveries] == [
                messages[0],
                messages[2],
                messages[3],
                messages[5],
            ]
            assert redis_client.lrange("{hydra:fetch:tasks}:ready:ftp", 0, -1)[0].endswith(
                messages[1]
            )
            assert redis_client.llen("{hydra:fetch:tasks}:ready:html") == 1  # for a web worker
            assert await s3.depth() == 2
            routed = await ftp.claim(10)
            assert [d.payload for d in routed.deliveries] == [messages[1]]
            assert all(len(d.message_id) == 24 for d in routed.deliveries)
            assert (await s3.claim(10)).deliveries == []  # html is not its either
        finally:
            for queue in (s3, ftp):
                await queue.close()

    asyncio.run(scenario())
