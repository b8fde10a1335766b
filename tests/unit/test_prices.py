"""Seed 000's batch rules: the prices spider, its stop-on-non-200 middleware, its task kind."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from scrapy import Request
from twisted.python.failure import Failure

from crawlers.items import PriceItem
from crawlers.middlewares.batch_stop import BatchStopMiddleware
from crawlers.models import PriceBatch
from crawlers.tasks.base import RunFailure
from crawlers.tasks.failures import ForbiddenUrl, StatusRefused, parse_retry_after
from crawlers.tasks.price_batches import PriceBatchKind
from tests.unit.helpers import batch_run, price_crawler, response_for


def test_requests_are_sequential_posts_that_skip_retry_and_redirect() -> None:
    _, spider, ledger = price_crawler(HYDRA_BATCH_OK_STATUSES="200,404")
    run = batch_run(ledger, ["a b", "c/../d"])
    request = spider.batches.request(run, 0)
    assert request.method == "POST"
    assert request.url == "http://t/p/a%20b"
    assert request.meta["hydra_lease"] == run.lease_id  # a plain id, picklable
    assert request.meta["dont_retry"] and request.meta["dont_redirect"]
    assert request.meta["handle_httpstatus_list"] == [200, 404]  # OK statuses reach the callback
    # an ID cannot leave the template's path: its slashes and dots are quoted
    assert spider.batches.request(run, 1).url == "http://t/p/c%2F..%2Fd"


def _collect(spider: Any, run: Any, bodies: list[object]) -> tuple[list[Any], list[str]]:
    """Drive ``start_task`` with hand-made responses instead of downloads."""
    fetched: list[str] = []

    async def fetch(request: Request) -> Any:
        fetched.append(request.url)
        body = bodies[len(fetched) - 1]
        if isinstance(body, Exception):
            raise body
        return response_for(request, body=body)

    spider.fetch = fetch

    async def scenario() -> list[Any]:
        return [item async for item in spider.start_task(run)]

    return asyncio.run(scenario()), fetched


def test_a_batch_posts_each_id_in_turn_and_yields_its_items() -> None:
    _, spider, ledger = price_crawler()
    run = batch_run(ledger, ["a", "b"])
    items, fetched = _collect(spider, run, [{"price": 2}, {"price": 3}])
    assert fetched == ["http://t/p/a", "http://t/p/b"]
    assert all(isinstance(item, PriceItem) for item in items)
    assert [(i.id, i.data, i.attempt, i.region) for i in items] == [
        ("a", {"price": 2}, 0, "default"),
        ("b", {"price": 3}, 0, "default"),
    ]
    assert run.cursor == 2 and not run.finished  # the ledger completes it once items are out


def test_malformed_json_fails_the_batch_at_that_id() -> None:
    crawler, spider, ledger = price_crawler()
    run = batch_run(ledger, ["a", "b", "c"])
    items, fetched = _collect(spider, run, [{"price": 1}, "<html>", {"price": 3}])
    assert [item.id for item in items] == ["a"] and len(fetched) == 2  # "c" never asked
    assert run.finished
    (requeue,) = run.outcome.requeue
    assert PriceBatch.model_validate_json(requeue.payload).ids == ["b", "c"]
    assert crawler.stats.get_value("hydra/prices/stopped/invalid_json") == 1


def test_a_refused_status_stops_the_batch_and_nothing_after_it_is_fetched() -> None:
    crawler, spider, ledger = price_crawler(HYDRA_RETRY_DELAY_MAX_SECONDS=60)
    run = batch_run(ledger, ["a", "b", "c"])
    items, fetched = _collect(spider, run, [{"price": 1}, StatusRefused(429, 9.0), {}])
    assert [item.id for item in items] == ["a"] and len(fetched) == 2
    (requeue,) = run.outcome.requeue
    remainder = PriceBatch.model_validate_json(requeue.payload)
    assert (remainder.ids, remainder.attempt, requeue.delay) == (["b", "c"], 1, 9.0)
    assert crawler.stats.get_value("hydra/prices/stopped/http_429") == 1


def test_stop_middleware_refuses_other_statuses_with_retry_after() -> None:
    crawler, spider, ledger = price_crawler(HYDRA_BATCH_OK_STATUSES="200,204")
    middleware = BatchStopMiddleware.from_crawler(crawler)
    run = batch_run(ledger, ["a"])
    request = spider.batches.request(run, 0)
    ok = response_for(request, status=204)
    assert middleware.process_response(request, ok) is ok
    refused = response_for(request, status=429)
    refused.headers[b"Retry-After"] = b"7"
    with pytest.raises(StatusRefused) as caught:
        middleware.process_response(request, refused)
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    foreign = Request("http://t/other")  # not a price request: not its business
    failed = response_for(foreign, status=500)
    assert middleware.process_response(foreign, failed) is failed


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after(b"12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after(b"soon") is None
    assert parse_retry_after(None) is None


def test_a_refusal_requeues_the_remainder_after_retry_after() -> None:
    crawler, spider, ledger = price_crawler(HYDRA_RETRY_DELAY_MAX_SECONDS=60)
    run = batch_run(ledger, ["a", "b", "c"])
    request = spider.batches.request(run, 1)
    spider.hydra_errback(_failure(StatusRefused(429, retry_after=9.0), request))
    assert run.finished
    (requeue,) = run.outcome.requeue
    remainder = PriceBatch.model_validate_json(requeue.payload)
    assert (remainder.ids, remainder.attempt) == (["b", "c"], 1)
    assert "HTTP 429 for id b" in (remainder.reason or "")
    assert requeue.delay == 9.0
    assert run.outcome.deadletter == []
    stats = crawler.stats.get_stats()
    assert stats["hydra/prices/stopped/http_429"] == 1
    assert stats["hydra/prices/ids_requeued"] == 2


def test_retry_delay_backs_off_per_attempt_and_is_capped() -> None:
    _, _, ledger = price_crawler(HYDRA_RETRY_DELAY_SECONDS=2, HYDRA_RETRY_DELAY_MAX_SECONDS=10)
    kind = ledger.kind_named("price_batch")
    assert [kind.retry_delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    assert kind.retry_delay(1, retry_after=3600) == 10  # Retry-After is capped too


def test_download_errors_stop_the_batch_like_a_status() -> None:
    crawler, spider, ledger = price_crawler()
    run = batch_run(ledger, ["a", "b"])
    request = spider.batches.request(run, 0)
    spider.hydra_errback(_failure(TimeoutError("too slow"), request))
    assert PriceBatch.model_validate_json(run.outcome.requeue[0].payload).ids == ["a", "b"]
    assert crawler.stats.get_value("hydra/prices/stopped/download_error/TimeoutError") == 1


def test_last_attempt_goes_to_the_dead_letter() -> None:
    crawler, spider, ledger = price_crawler(HYDRA_BATCH_MAX_ATTEMPTS=3)
    run = batch_run(ledger, ["a", "b"], attempt=2)
    request = spider.batches.request(run, 1)
    spider.hydra_errback(_failure(StatusRefused(503), request))
    assert run.outcome.requeue == []
    entry = json.loads(run.outcome.deadletter[0])
    assert (entry["reason"], entry["kind"], entry["message_id"]) == (
        "max_attempts",
        "price_batch",
        "msg-1",
    )
    assert json.loads(entry["payload"])["ids"] == ["b"]
    assert crawler.stats.get_value("hydra/prices/ids_deadlettered") == 1


def test_a_forbidden_url_is_dead_lettered_at_once() -> None:
    _, spider, ledger = price_crawler(HYDRA_BATCH_MAX_ATTEMPTS=5)
    run = batch_run(ledger, ["a"])
    request = spider.batches.request(run, 0)
    spider.hydra_errback(_failure(ForbiddenUrl("scheme 'file' is not allowed"), request))
    assert run.outcome.requeue == []
    assert json.loads(run.outcome.deadletter[0])["reason"] == "forbidden_url"


def test_checkpoint_is_the_remainder_after_what_was_emitted() -> None:
    _, _, ledger = price_crawler()
    kind = ledger.kind_named("price_batch")
    run = batch_run(ledger, ["a", "b", "c"])
    assert kind.checkpoint(run) is None  # nothing emitted yet: the message as it is
    run.cursor = 2
    assert kind.checkpoint(run) is None  # emitted, but not yet through the pipelines
    run.settled_cursor = 2
    rest = PriceBatch.model_validate_json(kind.checkpoint(run) or "")
    assert (rest.ids, rest.attempt) == (["c"], 0)  # a resume is not a new attempt
    run.cursor = run.settled_cursor = 3
    assert kind.checkpoint(run) is None  # all done: nothing to resume


def test_a_chain_that_ends_early_requeues_what_was_not_fetched() -> None:
    crawler, _, ledger = price_crawler()
    kind = ledger.kind_named("price_batch")
    run = batch_run(ledger, ["a", "b", "c"])
    run.cursor = 1
    (requeue,) = kind.on_complete(run).requeue
    assert PriceBatch.model_validate_json(requeue.payload).ids == ["b", "c"]
    assert crawler.stats.get_value("hydra/prices/stopped/chain_ended") == 1
    run.cursor = 3
    assert kind.on_complete(run).requeue == []


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("file:///srv/data/{id}", "forbidden_url"),
        ("ftp://host/{id}", "forbidden_url"),
        ("s3://bucket/{id}", "forbidden_url"),
        ("http://{id}.evil.example/x", "invalid"),
        ("notaurl/{id}", "invalid"),
    ],
)
def test_templates_outside_the_policy_are_refused(template: str, reason: str) -> None:
    _, _, ledger = price_crawler()
    kind = ledger.kind_named("price_batch")
    payload = json.dumps({"run_id": "r", "batch_id": "b", "ids": ["1"], "url_template": template})
    with pytest.raises(ValueError) as caught:
        kind.parse(payload)
    assert getattr(caught.value, "reason", "invalid") == reason


def test_allowed_hosts_limit_templates() -> None:
    _, _, ledger = price_crawler(HYDRA_ALLOWED_HOSTS="*.prices.example")
    kind = ledger.kind_named("price_batch")
    good = {"run_id": "r", "batch_id": "b", "ids": ["1"]}
    assert kind.parse(json.dumps({**good, "url_template": "https://eu.prices.example/{id}"}))
    with pytest.raises(ValueError, match="not allowed"):
        kind.parse(json.dumps({**good, "url_template": "https://evil.example/{id}"}))


def test_replay_resets_the_attempts() -> None:
    payload = PriceBatch(run_id="r", batch_id="b", ids=["1"], attempt=5).model_dump_json()
    assert PriceBatch.model_validate_json(PriceBatchKind.replay_payload(payload)).attempt == 0


def test_failures_of_a_finished_run_change_nothing() -> None:
    _, _, ledger = price_crawler()
    run = batch_run(ledger, ["a"])
    ledger.fail(run, RunFailure("http_500", "HTTP 500"))
    first = run.outcome
    ledger.fail(run, RunFailure("http_502", "HTTP 502"))
    assert run.outcome is first


def _failure(exc: Exception, request: Request) -> Failure:
    failure = Failure(exc)
    failure.request = request  # type: ignore[attr-defined]
    return failure


def test_a_failure_after_the_last_id_completes_the_batch() -> None:
    _, _, ledger = price_crawler()
    run = batch_run(ledger, ["a", "b"])
    run.cursor = run.settled_cursor = 2  # every ID fetched; the deadline hit the tail
    ledger.fail(run, RunFailure("timeout", "run not finished within 600 s"))
    assert run.finished and run.outcome.requeue == [] and run.outcome.deadletter == []


def test_events_report_progress_stops_and_failures_without_credentials() -> None:
    _, _, ledger = price_crawler(HYDRA_REGION="eu-1", HYDRA_BATCH_MAX_ATTEMPTS=2)
    kind = ledger.kind_named("price_batch")
    run = batch_run(ledger, ["1", "2", "3", "4"])
    run.reported_cursor = 1
    (stored,) = (json.loads(e) for e in kind.progress_events(run, 3))
    assert (stored["type"], stored["ids"], stored["region"]) == ("stored", ["2", "3"], "eu-1")
    assert kind.progress_events(run, 1) == []  # nothing new: no event
    detail = "Connection refused by http://user:s3cret@proxy.example:3128"
    run.cursor = 3
    outcome = kind.on_failure(run, RunFailure("download_error", detail))
    (stopped,) = (json.loads(e) for e in outcome.events)
    assert (stopped["type"], stopped["remainder"]) == ("stopped", 1)
    assert "s3cret" not in stopped["reason"] and "proxy.example" in stopped["reason"]
    last = batch_run(ledger, ["9"], attempt=1, lease_id="lease-2")
    outcome = kind.on_failure(last, RunFailure("http_403", "HTTP 403"))
    assert [json.loads(e)["type"] for e in outcome.events] == ["stopped", "failed"]
    assert json.loads(outcome.events[1])["ids"] == ["9"]  # dead-lettered: failed for good
