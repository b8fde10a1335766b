"""The TaskLedger on the embedded queue: admission, when messages are acked, checkpoints,
failing sinks, lost leases, deadlines, and shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import TextResponse
from twisted.python.failure import Failure

from crawlers.extensions.task_ledger import TaskLedger
from crawlers.models import PriceBatch
from crawlers.queues.memory import MemoryQueue
from crawlers.sinks import Rejection, Row
from crawlers.tasks.base import TaskRun
from tests.servers import free_port
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


async def _claim_one(ledger: TaskLedger) -> TaskRun:
    stream = ledger.consume()
    run = await anext(stream)
    await stream.aclose()
    return run


def _deadletters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dl.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _response(run: TaskRun) -> TextResponse:
    request = Request("http://t/p/1", meta={"hydra_lease": run.lease_id})
    return TextResponse(request.url, body=b"{}", encoding="utf-8", request=request)


class FakeSink:
    """A flushable like the sink pipeline's handles; ``failures`` flushes raise first."""

    def __init__(self, failures: int = 0, rejections: list[Rejection] | None = None) -> None:
        self.failures = failures
        self.rejections = rejections or []
        self.flushes = 0
        self.gate: asyncio.Event | None = None

    def dirty(self) -> bool:
        return False

    async def flush(self) -> list[Rejection]:
        self.flushes += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        rejected, self.rejections = self.rejections, []
        return rejected


def test_bad_messages_are_dead_lettered_and_the_worker_goes_on(tmp_path: Path) -> None:
    bad = [
        "not json",
        '{"run_id": "r"}',
        "[" * 100_000,  # once a RecursionError that stopped the intake
        json.dumps({"run_id": "r", "batch_id": "x", "ids": ["1"], "url_template": "notaurl/{id}"}),
        json.dumps({"run_id": "r", "batch_id": "y", "ids": ["1"], "url_template": "file:///{id}"}),
        json.dumps({"run_id": "r", "batch_id": "z", "ids": [".."]}),
        json.dumps({"run_id": "r", "batch_id": "big", "ids": ["1" * 1000] * 200}),
    ]

    async def scenario() -> list[TaskRun]:
        ledger, queue = await _open(tmp_path, HYDRA_MAX_MESSAGE_BYTES=150_000)
        await queue.push([*bad, _batch("ok", ["1"])])
        runs = []
        async for run in ledger.consume():
            runs.append(run)
            run.finished = True
            await ledger.settle()
        return runs

    runs = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [run.message.batch_id for run in runs] == ["ok"]
    entries = _deadletters(tmp_path)
    assert [entry["reason"] for entry in entries] == [
        *["invalid_message"] * 4,
        "forbidden_url",
        "invalid_message",
        "invalid_message",
    ]
    assert "batch_id: Field required" in entries[1]["error"]
    assert "HYDRA_MAX_MESSAGE_BYTES" in entries[6]["error"]
    assert entries[6]["payload_truncated"] and len(entries[6]["payload"]) == 150_000
    assert [entry["payload"] for entry in entries[:2]] == bad[:2]
    assert all(entry["kind"] == "price_batch" and entry["worker"] for entry in entries)


def test_ack_waits_for_items_and_the_flush(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        ledger, queue = await _open(tmp_path, HYDRA_RETRY_DELAY_SECONDS=0)
        sink = FakeSink()
        ledger.add_flushable(sink)
        await queue.push([_batch("b", ["1", "2"])])
        run = await _claim_one(ledger)
        item: dict[str, Any] = {"id": "1"}
        ledger.attach(run, item)
        ledger.fail(run, _stop())
        await ledger.settle()
        assert sink.flushes == 0 and run.lease_id in ledger.runs  # an item is in the pipelines
        assert (await queue.claim(5)).deliveries == []  # the remainder is not out yet
        ledger.item_scraped(item, _response(run), None)  # type: ignore[arg-type]
        await ledger.settle()
        assert not ledger.runs and sink.flushes == 1
        return [d.payload for d in (await queue.claim(5)).deliveries]

    (payload,) = asyncio.run(scenario())
    assert PriceBatch.model_validate_json(payload).ids == ["1", "2"]


def test_failed_flush_keeps_leases_pauses_intake_and_recovers(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        ledger, queue = await _open(
            tmp_path, HYDRA_ACK_INTERVAL_SECONDS=0.01, HYDRA_QUEUE_PREFETCH=1
        )
        sink = FakeSink(failures=2)
        ledger.add_flushable(sink)
        await queue.push([_batch("a", ["1"]), _batch("b", ["2"])])
        run = await _claim_one(ledger)
        ledger.attach(run, item := {"id": "1"})
        ledger.item_scraped(item, _response(run), None)  # type: ignore[arg-type]
        run.finished = True
        await ledger.settle()
        assert ledger.sink_failing and run.lease_id in ledger.runs  # not acked
        assert ledger._room() == 0  # no new work while the sink fails
        await ledger.settle()  # too early for the retry: no flush attempted
        assert sink.flushes == 1
        await asyncio.sleep(0.05)
        await ledger.settle()  # second failure
        await asyncio.sleep(0.1)
        await ledger.settle()  # recovers
        assert sink.flushes == 3 and not ledger.sink_failing and not ledger.runs
        assert ledger._room() > 0
        return ledger.stats.get_stats()

    stats = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert stats["hydra/sink/flush_errors"] == 2
    assert stats["hydra/queue/acked"] == 1


def test_runs_without_items_are_acked_while_a_sink_fails(tmp_path: Path) -> None:
    async def scenario() -> int:
        ledger, queue = await _open(tmp_path)
        ledger.add_flushable(FakeSink(failures=100))
        await queue.push(["not json"])
        (delivery,) = (await queue.claim(1)).deliveries
        assert ledger._admit(delivery) is None  # dead-lettered: a run without items
        ledger.sink_failures, ledger._sink_retry_at = 1, float("inf")
        await ledger.settle()
        return len(ledger.runs)

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == 0
    assert [e["reason"] for e in _deadletters(tmp_path)] == ["invalid_message"]


def test_rows_a_sink_rejects_are_dead_lettered_with_their_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1"])])
        run = await _claim_one(ledger)
        row = Row("r/1", {"id": "1", "price": "NaN"}, run.lease_id)
        ledger.add_flushable(FakeSink(rejections=[Rejection(row, "price: not a number")]))
        ledger.attach(run, item := {"id": "1"})
        ledger.item_scraped(item, _response(run), None)  # type: ignore[arg-type]
        run.cursor = 1
        ledger.start_finished(run)
        await ledger.settle()
        assert not ledger.runs

    asyncio.run(scenario())
    (entry,) = _deadletters(tmp_path)
    assert (entry["reason"], entry["error"]) == ("sink_rejected", "price: not a number")
    assert json.loads(entry["payload"]) == {"id": "1", "price": "NaN"}
    assert entry["details"] == {"row_key": "r/1"}


def test_checkpoint_is_recorded_only_after_a_good_flush(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        ledger, queue = await _open(tmp_path)
        sink = FakeSink(failures=1)
        ledger.add_flushable(sink)
        await queue.push([_batch("b", ["1", "2", "3"])])
        run = await _claim_one(ledger)
        run.cursor = run.settled_cursor = 2  # items of "1" and "2" through the pipelines
        await ledger.settle()  # the flush fails: nothing may be recorded
        assert queue._leased[run.lease_id].payload == run.delivery.payload
        ledger._sink_retry_at = 0
        await ledger.settle()
        assert run.checkpointed is not None
        assert queue._leased[run.lease_id].payload == run.checkpointed
        await ledger.spider_closed(ledger.crawler.spider, "shutdown")  # type: ignore[arg-type]
        return [d.payload for d in (await queue.claim(5)).deliveries]

    (payload,) = asyncio.run(scenario())
    rest = PriceBatch.model_validate_json(payload)
    assert (rest.ids, rest.attempt) == (["3"], 0)  # resumed after what is durable


def test_a_run_ends_by_itself_when_nothing_is_outstanding(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1", "2"])])
        run = await _claim_one(ledger)
        first = Request("http://t/p/1")
        ledger.attach(run, first)
        assert first.meta["hydra_lease"] == run.lease_id
        ledger.start_finished(run)
        assert not run.finished  # a request is outstanding
        follow = Request("http://t/p/2")
        ledger.attach(run, follow)
        ledger.request_done(first)
        ledger.request_done(first)  # idempotent
        assert not run.finished
        run.cursor = 2
        ledger.request_dropped(follow, None)  # type: ignore[arg-type]
        assert run.finished and run.outcome.requeue == []

    asyncio.run(scenario())


def test_a_lost_lease_stops_its_run_and_is_never_acked(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1", "2"])])
        run = await _claim_one(ledger)
        del queue._leased[run.lease_id]  # as if another worker had reclaimed it
        await ledger.renew()
        assert run.finished and run.lease_id not in ledger.runs
        assert ledger.run_for(run.lease_id) is None  # its requests and outputs are ignored
        return ledger.stats.get_stats()

    assert asyncio.run(scenario())["hydra/queue/lease_lost"] == 1


def test_a_run_past_its_deadline_is_stopped(tmp_path: Path) -> None:
    async def scenario() -> TaskRun:
        ledger, queue = await _open(tmp_path, HYDRA_TASK_TIMEOUT_SECONDS=0.05)
        await queue.push([_batch("b", ["1", "2"])])
        run = await _claim_one(ledger)
        ledger.attach(run, Request("http://t/p/1"))  # never answered
        ledger.start_finished(run)
        await asyncio.sleep(0.1)
        await ledger.watchdog()
        return run

    run = asyncio.run(scenario())
    assert run.finished
    (requeue,) = run.outcome.requeue
    assert "not finished within" in (PriceBatch.model_validate_json(requeue.payload).reason or "")


def test_shutdown_during_a_flush_keeps_the_acks(tmp_path: Path) -> None:
    """Closing while the settle loop is inside a slow flush must not lose the ready acks."""

    async def scenario() -> dict[str, Any]:
        ledger, queue = await _open(tmp_path, HYDRA_ACK_INTERVAL_SECONDS=0.01)
        sink = FakeSink()
        sink.gate = asyncio.Event()
        ledger.add_flushable(sink)
        await queue.push([_batch("b", ["1"])])
        run = await _claim_one(ledger)
        ledger.attach(run, item := {"id": "1"})
        ledger.item_scraped(item, _response(run), None)  # type: ignore[arg-type]
        run.cursor = 1
        ledger.start_finished(run)
        while sink.flushes == 0:  # the loop is now waiting inside the flush
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(ledger.spider_closed(ledger.crawler.spider, "x"))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        sink.gate.set()
        await closing
        assert await queue.depth() == 0  # acked, not given back whole
        return ledger.stats.get_stats()

    stats = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert stats["hydra/queue/acked"] == 1
    assert stats.get("hydra/queue/released", 0) == 0


def test_item_errors_are_dead_lettered_not_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("b", ["1"])])
        run = await _claim_one(ledger)
        ledger.attach(run, item := {"id": "1"})
        failure = Failure(ValueError("bad row"))
        ledger.item_error(item, _response(run), None, failure)  # type: ignore[arg-type]
        run.cursor = 1
        ledger.start_finished(run)
        await ledger.settle()

    asyncio.run(scenario())
    (entry,) = _deadletters(tmp_path)
    assert (entry["reason"], entry["error"]) == ("item_error", "bad row")
    assert json.loads(entry["payload"]) == {"id": "1"}


def test_embedded_queue_waits_for_delayed_retries_then_stops(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        ledger, queue = await _open(tmp_path)
        await queue.push([_batch("a", ["1"])])
        seen = []
        async for run in ledger.consume():
            seen.append(run.message.batch_id)
            if run.message.batch_id == "a":
                run.outcome.requeue.append(_requeue(_batch("a2", ["1"]), delay=0.2))
            run.finished = True
            await ledger.settle()
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == ["a", "a2"]


def test_room_is_bounded_by_prefetch(tmp_path: Path) -> None:
    async def scenario() -> int:
        ledger, queue = await _open(tmp_path, HYDRA_QUEUE_PREFETCH=2)
        await queue.push([_batch(str(n), ["1"]) for n in range(5)])
        stream = ledger.consume()
        await anext(stream)
        await anext(stream)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(stream), 0.3)
        return len(ledger.runs)

    assert asyncio.run(scenario()) == 2


def test_an_unreachable_queue_at_start_is_waited_for_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the exception in spider_opened was swallowed and the loops never started."""

    async def scenario() -> tuple[TaskLedger, float]:
        url = f"redis://127.0.0.1:{free_port()}/0"
        _, spider, ledger = price_crawler(
            HYDRA_REDIS_URL=url, HYDRA_IDLE_CLOSE_SECONDS=0.3, HYDRA_QUEUE_POLL_MAX_SECONDS=0.05
        )
        await ledger.spider_opened(spider)  # must not raise
        assert len(ledger._loops) == 3 and not any(loop.done() for loop in ledger._loops)
        started = asyncio.get_running_loop().time()
        async for _ in ledger.consume():
            pass
        elapsed = asyncio.get_running_loop().time() - started
        await ledger.spider_closed(spider, "finished")
        return ledger, elapsed

    ledger, elapsed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert 0.3 <= elapsed < 10  # HYDRA_IDLE_CLOSE_SECONDS honoured while the queue is down
    assert ledger.stats.get_value("hydra/worker/failed") == "queue_unreachable"
    assert "Waiting for the queue" in caplog.text


def _stop() -> Any:
    from crawlers.tasks.base import RunFailure

    return RunFailure("http_429", "HTTP 429")


def _requeue(payload: str, delay: float) -> Any:
    from crawlers.queues import Requeue

    return Requeue(payload, delay)


def test_dead_letters_are_not_lost_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        _, spider, ledger = price_crawler(HYDRA_DEADLETTER_PATH="/dev/full", HYDRA_SINKS="")
        await ledger.spider_opened(spider)
        queue = ledger.queue
        assert isinstance(queue, MemoryQueue)
        await queue.push(["not json"])
        (delivery,) = (await queue.claim(1)).deliveries
        assert ledger._admit(delivery) is None
        await ledger.settle()  # ENOSPC: the ack must not happen without its dead letter
        assert delivery.lease_id in ledger.runs and delivery.lease_id in queue._leased
        queue.deadletter_path = tmp_path / "dl.jsonl"
        await ledger.settle()
        assert not ledger.runs and not queue._leased

    asyncio.run(scenario())
    assert [e["reason"] for e in _deadletters(tmp_path)] == ["invalid_message"]


def test_a_run_whose_items_never_return_fails_as_an_attempt(tmp_path: Path) -> None:
    async def scenario() -> TaskRun:
        ledger, queue = await _open(tmp_path, HYDRA_TASK_TIMEOUT_SECONDS=0.02)
        await queue.push([_batch("b", ["1", "2", "3"])])
        run = await _claim_one(ledger)
        ledger.attach(run, first := {"id": "1"})
        run.cursor = 1
        ledger.item_scraped(first, None, None)  # type: ignore[arg-type]
        assert run.settled_cursor == 1
        run.cursor = 2
        ledger.attach(run, stuck := {"id": "2"})  # never comes back from the pipelines
        ledger.start_finished(run)
        await asyncio.sleep(0.05)
        await ledger.watchdog()
        assert id(stuck) not in ledger._item_owner
        return run

    run = asyncio.run(scenario())
    assert run.finished and run.items_pending == 0
    (requeue,) = run.outcome.requeue
    rest = PriceBatch.model_validate_json(requeue.payload)
    assert (rest.ids, rest.attempt) == (["2", "3"], 1)  # from what is through; an attempt


def test_a_sink_that_keeps_failing_makes_the_worker_give_up(tmp_path: Path) -> None:
    async def scenario() -> TaskLedger:
        ledger, queue = await _open(tmp_path, HYDRA_SINK_GIVE_UP_SECONDS=0.2)
        ledger.add_flushable(FakeSink(failures=100))
        await queue.push([_batch("a", ["1"])])
        stream = ledger.consume()
        run = await anext(stream)
        ledger.attach(run, {"id": "1"})
        await ledger.settle(final=True)  # fails: intake pauses
        assert ledger.sink_failing
        remaining = [r async for r in stream]  # returns once the sink has failed long enough
        assert remaining == []
        return ledger

    ledger = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert ledger.stats.get_value("hydra/worker/failed") == "sink_failed"


def test_shutdown_acks_a_run_whose_every_item_is_stored_but_not_yet_finished(
    tmp_path: Path,
) -> None:
    """SIGINT can land after a batch's last item is stored but before its last request is
    done: the batch must be acked, not given back from an older checkpoint (which stored
    its tail twice in CI)."""

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        ledger, queue = await _open(tmp_path)
        sink = FakeSink()
        ledger.add_flushable(sink)
        await queue.push([_batch("b", ["1", "2", "3"])])
        run = await _claim_one(ledger)
        run.items_emitted = 1
        run.cursor = run.settled_cursor = 1
        await ledger.settle()  # checkpoint: resume at "2"
        assert run.checkpointed is not None
        ledger.attach(run, Request("http://t/p/3"))  # still outstanding at shutdown
        run.items_emitted = 3
        run.cursor = run.settled_cursor = 3  # "2" and "3" through the pipelines
        await ledger.settle(final=True)  # the sink pipeline's last flush
        ledger.remove_flushable(sink)
        await ledger.spider_closed(ledger.crawler.spider, "shutdown")  # type: ignore[arg-type]
        left = [d.payload for d in (await queue.claim(5)).deliveries]
        return left, ledger.stats.get_stats()

    left, stats = asyncio.run(scenario())
    assert left == []  # nothing of the batch comes back
    assert stats["hydra/queue/acked"] == 1
    assert stats.get("hydra/queue/released", 0) == 0
