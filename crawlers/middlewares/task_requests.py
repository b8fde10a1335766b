"""Checks every request of a task run before it is downloaded.

Downloader middleware, early (order 40; redirects pass through it again):

- a request whose run has ended (stopped, timed out, lease lost) is not
  fetched: the message is requeued or belongs to another worker now;
- a URL outside ``HYDRA_ALLOWED_SCHEMES``/``HYDRA_ALLOWED_HOSTS`` is never
  fetched: the run fails with ``forbidden_url`` and is dead-lettered. Every
  request of a task spider is checked, also one that carries no lease.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from crawlers.config import HydraConfig
from crawlers.extensions.task_ledger import TaskLedger
from crawlers.tasks.failures import ForbiddenUrl, RunEnded
from crawlers.urlpolicy import UrlPolicy

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler


class TaskRequestsMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.policy = UrlPolicy.from_config(HydraConfig.from_crawler(crawler))

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> TaskRequestsMiddleware:
        return cls(crawler)

    @cached_property
    def ledger(self) -> TaskLedger:
        return TaskLedger.of(self.crawler)

    def process_request(self, request: Request) -> None:
        lease = request.meta.get("hydra_lease")
        if lease is None:
            if not getattr(self.crawler.spider, "task_kind", ""):
                return  # not a task spider: not Hydra's business
            # a task spider's request that escaped attribution is still held to the policy
        elif self.ledger.run_for(lease) is None:
            raise RunEnded("the task run of this request has ended")
        problem = self.policy.violation(request.url)
        if problem is not None:
            raise ForbiddenUrl(problem)
