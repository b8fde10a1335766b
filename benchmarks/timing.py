"""A Scrapy extension that records when the first and the last response arrived.

Both benchmark runs load it, so they are measured the same way: requests/s is
``responses / (last - first)``, which leaves out process start-up, spider
opening and the idle wait before closing. Enable it with
``-s EXTENSIONS='{"benchmarks.timing.ResponseTiming": 0}'`` (merged with the
project's own extensions, if any) and ``-s BENCH_TIMING_PATH=/some/file.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals
from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

TIMING_PATH_SETTING = "BENCH_TIMING_PATH"


class ResponseTiming:
    """Counts responses and items; writes ``{"responses", "items", "first", "last"}`` at close.

    Times are ``time.monotonic()`` values: on Linux that clock is system-wide, so
    the benchmark script can also compare them with its own start time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.responses = 0
        self.items = 0
        self.first: float | None = None
        self.last: float | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ResponseTiming:
        path = crawler.settings.get(TIMING_PATH_SETTING)
        if not path:
            raise NotConfigured(f"ResponseTiming: set {TIMING_PATH_SETTING}")
        # "{pid}" in the path: one file per process when several workers run
        extension = cls(Path(str(path).replace("{pid}", str(os.getpid()))))
        crawler.signals.connect(extension.response_received, signal=signals.response_received)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def response_received(self, response: Response, request: Request, spider: Spider) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.responses += 1

    def item_scraped(self, item: Any, response: Response | None, spider: Spider) -> None:
        self.items += 1

    def spider_closed(self, spider: Spider, reason: str) -> None:
        document = {
            "responses": self.responses,
            "items": self.items,
            "first": self.first,
            "last": self.last,
            "reason": reason,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(document), encoding="utf-8")
