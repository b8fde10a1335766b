"""A log formatter that builds no log record nobody will read.

Scrapy logs a DEBUG line for every response ("Crawled") and every item
("Scraped"). The level is applied by Scrapy's log handler, not by the loggers,
so at ``LOG_LEVEL=INFO`` each line still costs a ``LogRecord`` and a trip
through the logging machinery (two per price ID). Returning ``None`` from the
formatter skips the line entirely, as Scrapy's documentation allows, whenever
the crawler's ``LOG_LEVEL`` would drop it anyway.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

from scrapy.logformatter import LogFormatter, LogFormatterResult

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure


class QuietLogFormatter(LogFormatter):
    def __init__(self, debug: bool = True) -> None:
        super().__init__()
        self.debug = debug

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        level = crawler.settings.get("LOG_LEVEL", "DEBUG")
        number = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
        enabled = crawler.settings.getbool("LOG_ENABLED", True)
        return cls(debug=enabled and isinstance(number, int) and number <= logging.DEBUG)

    def crawled(  # type: ignore[override]
        self, request: Request, response: Response, spider: Spider
    ) -> LogFormatterResult | None:
        return super().crawled(request, response, spider) if self.debug else None

    def scraped(  # type: ignore[override]
        self, item: Any, response: Response | Failure | None, spider: Spider
    ) -> LogFormatterResult | None:
        return super().scraped(item, response, spider) if self.debug else None
