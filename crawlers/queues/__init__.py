"""Task-queue backends, chosen by the scheme of ``HYDRA_QUEUE_URL``, else of
``HYDRA_REDIS_URL`` (both empty: embedded).

The registry is ``HYDRA_QUEUE_SCHEMES_BASE`` merged with ``HYDRA_QUEUE_SCHEMES``;
a backend is built with ``build_from_crawler(cls, crawler, key=..., worker_id=...)``.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy.utils.misc import build_from_crawler, load_object

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.queues.base import (
    Acknowledgement,
    Checkpoint,
    ClaimResult,
    Delivery,
    Requeue,
    Route,
    TaskQueue,
)

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def new_worker_id() -> str:
    """Unique per process, readable in Redis: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def build_queue(
    crawler: Crawler, key: str, *, worker_id: str, route: Route | None = None
) -> TaskQueue:
    """The queue for ``key``; no I/O happens until it is used."""
    config = HydraConfig.from_crawler(crawler)
    schemes = config.registry("queue_schemes")
    setting = "HYDRA_QUEUE_URL" if config.queue_url else "HYDRA_REDIS_URL"
    scheme = urlsplit(config.queue_url or config.redis_url or "memory://").scheme
    if scheme not in schemes:
        known = ", ".join(sorted(schemes))
        raise HydraConfigError([f"{setting}: unsupported scheme {scheme!r} (known: {known})"])
    extra = {"route": route} if route is not None else {}
    queue: TaskQueue = build_from_crawler(
        load_object(schemes[scheme]), crawler, key=key, worker_id=worker_id, **extra
    )
    return queue


__all__ = [
    "Acknowledgement",
    "Checkpoint",
    "ClaimResult",
    "Delivery",
    "Requeue",
    "Route",
    "TaskQueue",
    "build_queue",
    "new_worker_id",
]
