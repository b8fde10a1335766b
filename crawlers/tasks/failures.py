"""Why a request of a task run did not produce a response for its callback.

Hydra's downloader middlewares stop requests by raising these (all are
``IgnoreRequest``s, so Scrapy logs nothing and calls the request's errback);
the task spider's errback turns the failure into a :class:`RunFailure` for the
task kind to decide on.
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING

from scrapy.exceptions import IgnoreRequest
from scrapy.spidermiddlewares.httperror import HttpError

from crawlers.tasks.base import RunFailure

if TYPE_CHECKING:
    from scrapy import Request
    from twisted.python.failure import Failure


class ForbiddenUrl(IgnoreRequest):
    """The URL breaks ``HYDRA_ALLOWED_SCHEMES``/``HYDRA_ALLOWED_HOSTS``; never fetched."""


class RunEnded(IgnoreRequest):
    """The request's run is over (finished, timed out, or its lease was lost)."""


class StatusRefused(IgnoreRequest):
    """A status the task does not accept (seed 000: anything but 200 stops the batch)."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: bytes | str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def run_failure(failure: Failure, request: Request | None) -> RunFailure:
    """Classify a request's failure for the task kind."""
    exc = failure.value
    if isinstance(exc, ForbiddenUrl):
        return RunFailure("forbidden_url", str(exc), request, permanent=True)
    if isinstance(exc, StatusRefused):
        return RunFailure(f"http_{exc.status}", str(exc), request, exc.retry_after)
    if isinstance(exc, HttpError):
        status = exc.response.status
        retry_after = parse_retry_after(exc.response.headers.get(b"Retry-After"))
        return RunFailure(f"http_{status}", f"HTTP {status}", request, retry_after)
    if isinstance(exc, RunEnded):
        return RunFailure("run_ended", str(exc), request)
    if isinstance(exc, IgnoreRequest):
        return RunFailure("ignored", str(exc) or "request ignored", request)
    name = type(exc).__name__
    return RunFailure(f"download_error/{name}", f"{name}: {exc}", request)
