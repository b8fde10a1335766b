"""Crawlers built from the project's settings, and hand-made responses, for unit tests."""

from __future__ import annotations

import json
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import TextResponse
from scrapy.utils.test import get_crawler

import crawlers.settings
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.models import PriceBatch
from crawlers.queues import Delivery
from crawlers.spiders.prices import PricesSpider
from crawlers.tasks.base import TaskRun

PROJECT_SETTINGS = {
    name: getattr(crawlers.settings, name) for name in dir(crawlers.settings) if name.isupper()
}
#: no background settle or renewal during a unit test unless the test asks for it
QUIET = {"HYDRA_ACK_INTERVAL_SECONDS": 3600, "HYDRA_QUEUE_LEASE_SECONDS": 3600}


def price_crawler(**settings: Any) -> tuple[Crawler, PricesSpider, TaskLedger]:
    crawler = get_crawler(PricesSpider, {**PROJECT_SETTINGS, **QUIET, **settings})
    spider = PricesSpider.from_crawler(crawler)
    crawler.spider = spider
    crawler.crawling = True  # as during a crawl: failures are judged, not put off
    ledger = crawler.get_extension(TaskLedger)
    assert ledger is not None
    return crawler, spider, ledger


def batch_run(
    ledger: TaskLedger, ids: list[str], attempt: int = 0, lease_id: str = "lease-1"
) -> TaskRun:
    """A run of a price batch, registered with the ledger as if claimed."""
    batch = PriceBatch(
        run_id="run", batch_id="b1", ids=ids, attempt=attempt, url_template="http://t/p/{id}"
    )
    kind = ledger.kind_named("price_batch")
    ledger.kind = kind
    run = TaskRun(Delivery(lease_id, batch.model_dump_json(), "q", "msg-1"), kind, message=batch)
    run.deadline = float("inf")
    ledger.runs[lease_id] = run
    return run


def response_for(request: Request, status: int = 200, body: object = None) -> TextResponse:
    """A response to ``request``; ``body`` is JSON-encoded unless it is already a string."""
    if body is None:
        body = {"price": 1.5}
    text = body if isinstance(body, str) else json.dumps(body)
    return TextResponse(
        request.url, status=status, body=text.encode(), encoding="utf-8", request=request
    )
