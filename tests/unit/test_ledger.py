"""The TaskLedger on the embedded queue: when messages are acked, and what travels with them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import TextResponse
from twisted.python.failure import Failure

from crawlers.extensions.task_ledger import TaskLedger, TaskRun
from crawlers.models import PriceBatch
from crawlers.queues.memory import MemoryQueue
from tests.unit.helpers import price_crawler


def _batch(batch_id: str, ids: list[str], **extra: Any) -> str:
    return PriceBatch(run_id="r", batch_id=batch_id, ids=ids, **extra).model_dump_json()


async def _open(tmp_path: Path, **settings: Any) -> tuple[TaskLedger, MemoryQueue]:
    _, spider, ledger = price_crawler(
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"), HYDRA_SINKS="", **settings
    )
    await ledger.spider_opened(spider)
    assert isinstance(ledger.queue, MemoryQueue)
    return ledger, ledger.queue


async def _drain(ledger: TaskLedger) -> list[TaskRun]:
    return [run async for run in ledger.consume(PriceBatch.model_validate_json)]


def _response(run: TaskRun) -> TextResponse:
    request = Request("http://t/p/1", meta={"hydra_run": run})
    return TextResponse(request.url, body=b"{}", encoding="utf-8", request=request)


def test_invalid_messages_are_dead_lettered_and_the_worker_goes_on(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[TaskRun], dict[str, Any]]:
        ledger, queue = await _open(tmp_path)
        await queue.push(["not json", '{"run_id": "r"}', _batch("ok", ["1"])])
        runs = await _drain_after_settle(ledger)
        return runs, ledger.stats.get_stats()

    async def _drain_after_settle(ledger: TaskLedger) -> list[TaskRun]:
        runs: list[TaskRun] = []
        async for run in ledger.consume(PriceBatch.model_validate_json):
            runs.append(run)
            ledger.finish(run)
            await ledger.settle()
        await ledger.settle()
        return runs

    runs, stats = asyncio.run(scenario())
    assert [run.message.batch_id for run in runs] == ["ok"]
    entries = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [entry["payload"] for entry in entries] == ["not json", '{"run_id": "r"}']
    assert all(entry["reason"] == "invalid_message" for entry in entries)
    assert "batch_id: Field required" in entries[1]["error"]
    assert stats["hydra/deadletter/invalid_message"] == 2
    assert stats["hydra/queue/acked"] == 3


def test_ack_waits_for_items_and_the_flush(tmp_path: Path) -> None:
    flushed: list[int] = []

    async def scenario() -> MemoryQueue:
        ledger, queue = await _open(tmp_path)

        async def flush() -> None:
            flushed.append(len(ledger.runs))

        ledger.add_flush_hook(flush)
        await queue.push([_batch("b", ["1", "2"])])
        (run,) = [run for run in await _claim_one(ledger)]
        ledger.item_emitted(run)
        ledger.finish(run, requeue=[_batch("rest", ["2"], attempt=1)])
        await ledger.settle()
        assert ledger.runs and not flushed  # one item is still in the pipelines
        assert (await queue.claim(5)).deliveries == []  # the remainder is not out yet
        ledger.item_scraped({}, _response(run), None)  # type: ignore[arg-type]
        await ledger.settle()
        assert not ledger.runs and flushed == [1]
        return queue

    queue = asyncio.run(scenario())
    claimed = asyncio.run(queue.claim(5)).deliveries
    assert [PriceBatch.model_validate_json(d.payload).batch_id for d in claimed] == ["rest"]


async def _claim_one(ledger: TaskLedger) -> list[TaskRun]:
    stream = ledger.consume(PriceBatch.model_validate_json)
    run = await anext(stream)
    await stream.aclose()
    return [run]


def test_failed_flush_keeps_the_lease(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        ledger, queue = await _open(tmp_path)
        failures = [RuntimeError("disk full")]

        async def flaky_flush() -> None:
            if failures:
                raise failures.pop()

        ledger.add_flush_hook(flaky_flush)
        await queue.push([_batch("b", ["1"])])
        (run,) = await _claim_one(ledger)
        ledger.finish(run)
        await ledger.settle()
        assert run.lease_id in ledger.runs
        await ledger.settle()
        assert not ledger.runs
        return ledger.stats.get_stats()

    stats = asyncio.run(scenario())
    assert stats["hydra/sink/flush_errors"] == 1
    assert stats["hydra/queue/acked"] == 1


def test_item_errors_are_dead_lettered_not_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1"])])
        (run,) = await _claim_one(ledger)
        ledger.item_emitted(run)
        failure = Failure(ValueError("bad row"))
        ledger.item_error({"id": "1"}, _response(run), None, failure)  # type: ignore[arg-type]
        ledger.finish(run)
        await ledger.settle()

    asyncio.run(scenario())
    (entry,) = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert entry["reason"] == "item_error"
    assert json.loads(entry["payload"]) == {"id": "1"}


def test_shutdown_requeues_what_a_batch_has_not_fetched(tmp_path: Path) -> None:
    _, spider, _ = price_crawler()

    async def scenario() -> list[str]:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1", "2", "3"], attempt=1)])
        (run,) = await _claim_one(ledger)
        spider.batches.admit(run)
        run.cursor = 2
        await ledger.spider_closed(spider, "shutdown")
        return [d.payload for d in (await queue.claim(5)).deliveries]

    (payload,) = asyncio.run(scenario())
    rest = PriceBatch.model_validate_json(payload)
    assert (rest.ids, rest.attempt) == (["3"], 1)


def test_embedded_queue_stops_once_drained(tmp_path: Path) -> None:
    async def scenario() -> int:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("a", ["1"]), _batch("b", ["2"])])
        count = 0
        async for run in ledger.consume(PriceBatch.model_validate_json):
            count += 1
            ledger.finish(run)
            await ledger.settle()
        return count

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == 2


def test_room_is_bounded_by_prefetch(tmp_path: Path) -> None:
    async def scenario() -> int:
        ledger, queue = await _open(tmp_path, HYDRA_QUEUE_PREFETCH=2)
        await queue.push([_batch(str(n), ["1"]) for n in range(5)])
        stream = ledger.consume(PriceBatch.model_validate_json)
        await anext(stream)
        await anext(stream)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.3)
        return len(ledger.runs)

    assert asyncio.run(scenario()) == 2


class FlakyQueue(MemoryQueue):
    """The embedded queue with its first claim and first ack failing, as during an outage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = {"claim": 1, "ack": 1}

    def _maybe_fail(self, operation: str) -> None:
        if self.failures[operation]:
            self.failures[operation] -= 1
            raise ConnectionError(f"{operation}: server went away")

    async def claim(self, limit: int) -> Any:
        self._maybe_fail("claim")
        return await super().claim(limit)

    async def ack(self, acks: Any) -> list[bool]:
        self._maybe_fail("ack")
        return await super().ack(acks)


def test_queue_outages_are_retried_not_fatal(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        ledger, _ = await _open(tmp_path, HYDRA_QUEUE_POLL_MAX_SECONDS=0.05)
        queue = FlakyQueue("q", str(tmp_path / "dl.jsonl"))
        ledger.queue = queue
        await queue.push([_batch("b", ["1"])])
        (run,) = await _claim_one(ledger)
        ledger.finish(run)
        await ledger.settle()
        assert run.lease_id in ledger.runs  # the failed ack keeps the run
        await ledger.settle()
        assert not ledger.runs
        return ledger.stats.get_stats()

    stats = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert stats["hydra/queue/errors"] == 2
    assert stats["hydra/queue/acked"] == 1


def test_shutdown_after_a_failed_flush_gives_messages_back_whole(tmp_path: Path) -> None:
    _, spider, _ = price_crawler()

    async def scenario() -> list[str]:
        ledger, queue = await _open(tmp_path)

        async def broken_flush() -> None:
            raise OSError("disk full")

        ledger.add_flush_hook(broken_flush)
        await queue.push([_batch("b", ["1", "2", "3"])])
        (run,) = await _claim_one(ledger)
        spider.batches.admit(run)
        run.cursor = 2
        await ledger.settle(flush=True)
        await ledger.spider_closed(spider, "shutdown")
        return [d.payload for d in (await queue.claim(5)).deliveries]

    (payload,) = asyncio.run(scenario())
    assert PriceBatch.model_validate_json(payload).ids == ["1", "2", "3"]
