"""Attribution of requests and items to task runs, for a spider that keeps no books of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from scrapy import Request
from twisted.python.failure import Failure

from crawlers.middlewares.task_requests import TaskRequestsMiddleware
from crawlers.middlewares.task_runs import TaskRunMiddleware
from crawlers.spiders.outputs import RunOutputs
from crawlers.tasks.failures import ForbiddenUrl, RunEnded
from tests.unit.helpers import batch_run, price_crawler, response_for


def _pages(response: Any) -> Iterator[Any]:
    """A multi-page callback: an item and two follow-ups, no bookkeeping."""
    yield {"page": response.url}
    yield Request("http://t/p/2")
    yield Request("http://t/p/3", errback=None)


def test_follow_ups_and_items_inherit_the_run() -> None:
    crawler, spider, ledger = price_crawler()
    middleware = TaskRunMiddleware.from_crawler(crawler)
    run = batch_run(ledger, ["1"])
    request = Request("http://t/p/1", meta={"hydra_lease": run.lease_id})
    ledger.attach(run, request)
    ledger.start_finished(run)
    response = response_for(request)
    outputs = list(middleware.process_spider_output(response, _pages(response)))
    item, second, third = outputs
    assert second.meta["hydra_lease"] == third.meta["hydra_lease"] == run.lease_id
    assert second.errback == spider.hydra_errback  # every failure reaches the run
    assert (run.outstanding, run.items_pending) == (2, 1)  # the first request is done
    assert ledger.owner_of(item) is run
    for follow in (second, third):
        list(middleware.process_spider_output(response_for(follow), iter([])))
    assert run.finished  # ended by itself when nothing was outstanding


def test_outputs_of_an_ended_run_are_dropped() -> None:
    crawler, _, ledger = price_crawler()
    middleware = TaskRunMiddleware.from_crawler(crawler)
    run = batch_run(ledger, ["1"])
    request = Request("http://t/p/1", meta={"hydra_lease": run.lease_id})
    ledger.attach(run, request)
    run.finished = True  # stopped meanwhile (another page failed, timed out, lease lost)
    response = response_for(request)
    assert list(middleware.process_spider_output(response, _pages(response))) == []
    assert crawler.stats.get_value("hydra/task/outputs_dropped") == 3


def test_requests_without_a_run_pass_untouched() -> None:
    crawler, _, _ = price_crawler()
    middleware = TaskRunMiddleware.from_crawler(crawler)
    request = Request("http://t/p/1")
    response = response_for(request)
    outputs = list(middleware.process_spider_output(response, _pages(response)))
    assert len(outputs) == 3 and "hydra_lease" not in outputs[1].meta


def test_a_callback_exception_fails_only_its_run() -> None:
    crawler, spider, ledger = price_crawler()
    middleware = TaskRunMiddleware.from_crawler(crawler)
    run, other = batch_run(ledger, ["1", "2"]), batch_run(ledger, ["9"], lease_id="lease-2")
    request = spider.batches.request(run, 1)
    ledger.attach(run, request)

    def broken(response: Any) -> Iterator[Any]:
        yield {"id": "1"}
        raise KeyError("price")

    items = list(middleware.process_spider_output(response_for(request), broken(None)))
    assert len(items) == 1
    assert run.finished and not other.finished
    assert "KeyError: 'price' for id 2" in run.outcome.requeue[0].payload  # remainder from "2"
    assert crawler.stats.get_value("hydra/task/callback_errors") == 1
    assert crawler.stats.get_value("hydra/prices/stopped/callback_error") == 1
    # a callback that raises before yielding reaches process_spider_exception
    run2 = batch_run(ledger, ["5"], lease_id="lease-3")
    request2 = spider.batches.request(run2, 0)
    ledger.attach(run2, request2)
    assert middleware.process_spider_exception(response_for(request2), ValueError("x")) == []
    assert run2.finished and run2.outstanding == 0


def test_own_errbacks_are_called_and_their_output_attributed() -> None:
    _, spider, ledger = price_crawler()
    run = batch_run(ledger, ["1"])
    calls: list[str] = []

    def tolerate(failure: Failure) -> Iterator[Any]:
        calls.append(type(failure.value).__name__)
        yield Request("http://t/fallback")

    spider.tolerate = tolerate  # type: ignore[attr-defined]
    request = Request("http://t/p/1", errback=tolerate)
    ledger.attach(run, request)
    assert request.errback == spider.hydra_errback
    assert request.meta["hydra_errback"] == "tolerate"  # a spider method: kept by name
    failure = Failure(TimeoutError("slow"))
    failure.request = request  # type: ignore[attr-defined]
    (fallback,) = spider.hydra_errback(failure)
    assert calls == ["TimeoutError"] and not run.finished  # the own errback decided
    assert fallback.meta["hydra_lease"] == run.lease_id and run.outstanding == 1


def test_download_middleware_stops_ended_runs_and_forbidden_urls() -> None:
    crawler, _, ledger = price_crawler(HYDRA_ALLOWED_HOSTS="t")
    middleware = TaskRequestsMiddleware.from_crawler(crawler)
    run = batch_run(ledger, ["1"])
    assert (
        middleware.process_request(Request("http://t/p/1", meta={"hydra_lease": "lease-1"})) is None
    )
    for url in ("file:///etc/passwd", "http://elsewhere/p/1", "data:,x"):
        with pytest.raises(ForbiddenUrl):
            middleware.process_request(Request(url, meta={"hydra_lease": run.lease_id}))
    run.finished = True
    with pytest.raises(RunEnded):
        middleware.process_request(Request("http://t/p/1", meta={"hydra_lease": run.lease_id}))


def test_an_error_while_starting_a_run_ends_that_run_only() -> None:
    crawler, spider, ledger = price_crawler()
    run = batch_run(ledger, ["1"])

    def broken_start(task_run: Any) -> Iterator[Any]:
        yield Request("http://t/p/1")
        raise ValueError("Missing scheme in request url: notaurl/1")

    spider.start_task = broken_start  # type: ignore[method-assign]

    async def scenario() -> list[Any]:
        spider._outputs = outputs = RunOutputs(4)
        outputs.spawn(spider._drive(run))
        return [output async for output in spider._attributed(ledger, outputs)]

    # the request it yielded before failing is not handed to Scrapy: the run is over
    assert asyncio.run(scenario()) == []
    assert run.finished and run.started
    assert "Missing scheme" in run.outcome.requeue[0].payload
    assert crawler.stats.get_value("hydra/prices/stopped/start_error") == 1


def test_a_retried_copy_of_a_request_is_attributed_again() -> None:
    """An errback that yields ``failure.request.replace(...)`` copies the meta flags of the
    failed request; the copy's outputs must still be counted (and checked by the policy)."""
    crawler, spider, ledger = price_crawler()
    middleware = TaskRunMiddleware.from_crawler(crawler)
    run = batch_run(ledger, ["1"])

    def retry(failure: Failure) -> Iterator[Any]:
        yield failure.request.replace(dont_filter=True)

    spider.retry = retry  # type: ignore[attr-defined]
    first = Request("http://t/p/1", errback=retry)
    ledger.attach(run, first)
    failure = Failure(TimeoutError("slow"))
    failure.request = first  # type: ignore[attr-defined]
    (copy,) = spider.hydra_errback(failure)
    assert "hydra_outputs_attributed" not in copy.meta and "hydra_done" not in copy.meta
    assert copy.errback == spider.hydra_errback and copy.meta["hydra_errback"] == "retry"
    response = response_for(copy)
    outputs = list(middleware.process_spider_output(response, _pages(response)))
    assert len(outputs) == 3 and run.items_pending == 1  # the copy's outputs count
    assert all(out.meta["hydra_lease"] == run.lease_id for out in outputs[1:])
    # a request built from copied meta without an errback gets no stale own errback
    stale = Request("http://t/p/9", meta=dict(copy.meta))
    ledger.attach(run, stale)
    assert "hydra_errback" not in stale.meta


def test_a_task_spiders_request_without_a_lease_is_still_held_to_the_policy() -> None:
    crawler, _, _ = price_crawler()
    middleware = TaskRequestsMiddleware.from_crawler(crawler)
    with pytest.raises(ForbiddenUrl):
        middleware.process_request(Request("file:///etc/passwd"))
