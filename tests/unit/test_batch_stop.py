"""Stop-on-non-200: the middleware and the spider's side of a batch."""

from __future__ import annotations

import json

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest

from crawlers.items import PriceItem
from crawlers.middlewares.batch_stop import BatchStopMiddleware
from crawlers.models import PriceBatch
from tests.unit.helpers import batch_run, price_crawler, response_for


def _setup(**settings: object):  # type: ignore[no-untyped-def]
    crawler, spider, ledger = price_crawler(**settings)
    middleware = BatchStopMiddleware.from_crawler(crawler)
    return crawler, spider, ledger, middleware


def test_ok_response_passes_and_keeps_the_batch_running() -> None:
    _crawler, spider, _, middleware = _setup()
    run = batch_run(["a", "b"])
    request = spider.batches.request(run, 0, spider.parse_price)
    response = response_for(request)
    assert middleware.process_response(request, response) is response
    assert not run.finished


def test_non_200_stops_and_requeues_the_remainder_failed_id_first() -> None:
    crawler, spider, _, middleware = _setup()
    run = batch_run(["a", "b", "c"])
    request = spider.batches.request(run, 1, spider.parse_price)
    with pytest.raises(IgnoreRequest):
        middleware.process_response(request, response_for(request, status=429))
    assert run.finished
    (requeued,) = run.requeue
    remainder = PriceBatch.model_validate_json(requeued)
    assert remainder.ids == ["b", "c"]
    assert remainder.attempt == 1
    assert "HTTP 429 for id b" in (remainder.reason or "")
    assert run.deadletter == []
    stats = crawler.stats.get_stats()
    assert stats["hydra/prices/stopped/http_429"] == 1
    assert stats["hydra/prices/ids_requeued"] == 2


def test_download_error_stops_the_batch() -> None:
    crawler, spider, _, middleware = _setup()
    run = batch_run(["a", "b"])
    request = spider.batches.request(run, 0, spider.parse_price)
    with pytest.raises(IgnoreRequest):
        middleware.process_exception(request, TimeoutError("too slow"))
    assert PriceBatch.model_validate_json(run.requeue[0]).ids == ["a", "b"]
    assert crawler.stats.get_value("hydra/prices/stopped/download_error/TimeoutError") == 1


def test_last_attempt_goes_to_the_dead_letter() -> None:
    crawler, spider, _, middleware = _setup(HYDRA_BATCH_MAX_ATTEMPTS=3)
    run = batch_run(["a", "b"], attempt=2)
    request = spider.batches.request(run, 1, spider.parse_price)
    with pytest.raises(IgnoreRequest):
        middleware.process_response(request, response_for(request, status=503))
    assert run.requeue == []
    entry = json.loads(run.deadletter[0])
    assert entry["reason"] == "max_attempts"
    assert json.loads(entry["payload"])["ids"] == ["b"]
    assert crawler.stats.get_value("hydra/prices/ids_deadlettered") == 1


def test_configured_ok_statuses_and_foreign_requests_pass() -> None:
    _, spider, _, middleware = _setup(HYDRA_BATCH_OK_STATUSES="200,204")
    run = batch_run(["a"])
    request = spider.batches.request(run, 0, spider.parse_price)
    response = response_for(request, status=204)
    assert middleware.process_response(request, response) is response
    foreign = Request("http://t/other")
    failed = response_for(foreign, status=500)
    assert middleware.process_response(foreign, failed) is failed


def test_requests_are_sequential_posts_that_skip_retry_and_redirect() -> None:
    _, spider, _, _ = _setup()
    run = batch_run(["a b", "c"])
    request = spider.batches.request(run, 0, spider.parse_price)
    assert request.method == "POST"
    assert request.url == "http://t/p/a%20b"
    assert request.meta["dont_retry"] and request.meta["dont_redirect"]
    outputs = list(spider.parse_price(response_for(request, body={"price": 2})))
    item, follow = outputs
    assert isinstance(item, PriceItem)
    assert (item.id, item.data, item.attempt, item.region) == ("a b", {"price": 2}, 0, "default")
    assert isinstance(follow, Request) and follow.meta["hydra_index"] == 1
    assert not run.finished
    last = list(spider.parse_price(response_for(follow)))
    assert len(last) == 1 and run.finished and run.requeue == []


def test_malformed_json_stops_the_batch() -> None:
    crawler, spider, _, _ = _setup()
    run = batch_run(["a", "b"])
    request = spider.batches.request(run, 0, spider.parse_price)
    assert list(spider.parse_price(response_for(request, body="<html>"))) == []
    assert PriceBatch.model_validate_json(run.requeue[0]).ids == ["a", "b"]
    assert crawler.stats.get_value("hydra/prices/stopped/invalid_json") == 1
