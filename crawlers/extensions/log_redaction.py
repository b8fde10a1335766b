"""Masks credentials in every log record: URLs with userinfo or secret query parameters.

Scrapy and other libraries log request URLs in many places (``Crawled``,
``Error downloading``, ``Retrying``, tracebacks); a message may carry
``https://user:pw@host/...`` or ``?token=...``. A filter on the log handlers
passes each record's final text (and its traceback) through the project's one
redaction helper, so no component has to remember to.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import signals

from crawlers.config import HydraConfig

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from crawlers.models.redaction import Redactor


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("hydra.redaction")
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's business
            return True
        redacted = self.redactor.text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        return True


def install(redactor: Redactor) -> None:
    """Add the filter to every handler of the root logger (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter(redactor))


class LogRedaction:
    """Extension: installs :class:`RedactingFilter` when the crawler starts (Scrapy may
    replace its root handler while a crawler is set up, so again at engine start)."""

    def __init__(self, crawler: Crawler) -> None:
        self.redactor = HydraConfig.from_crawler(crawler).redactor
        install(self.redactor)
        crawler.signals.connect(self.engine_started, signal=signals.engine_started)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LogRedaction:
        return cls(crawler)

    def engine_started(self) -> None:
        install(self.redactor)
