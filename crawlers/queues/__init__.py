"""Task-queue backends, chosen by the scheme of ``HYDRA_REDIS_URL`` (empty: embedded)."""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy.utils.misc import load_object

from crawlers.queues.base import Acknowledgement, ClaimResult, Delivery, TaskQueue

if TYPE_CHECKING:
    from crawlers.config import HydraConfig

#: URL scheme -> backend; ``memory`` is what an empty ``HYDRA_REDIS_URL`` means
QUEUE_SCHEMES = {
    "memory": "crawlers.queues.memory.MemoryQueue",
    "redis": "crawlers.queues.redis.RedisLeaseQueue",
    "rediss": "crawlers.queues.redis.RedisLeaseQueue",
    "unix": "crawlers.queues.redis.RedisLeaseQueue",
}


def new_worker_id() -> str:
    """Unique per process, readable in Redis: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def build_queue(
    config: HydraConfig,
    key: str,
    *,
    worker_id: str,
    redis_params: dict[str, Any] | None = None,
) -> TaskQueue:
    """The queue for ``key``; no I/O happens until ``open()``."""
    url = config.redis_url or "memory://"
    scheme = urlsplit(url).scheme
    if scheme not in QUEUE_SCHEMES:
        known = ", ".join(sorted(QUEUE_SCHEMES))
        raise ValueError(f"HYDRA_REDIS_URL has unsupported scheme {scheme!r} (known: {known})")
    backend = load_object(QUEUE_SCHEMES[scheme])
    queue: TaskQueue = backend.from_config(
        config, key, worker_id=worker_id, redis_params=redis_params or {}
    )
    return queue


__all__ = [
    "QUEUE_SCHEMES",
    "Acknowledgement",
    "ClaimResult",
    "Delivery",
    "TaskQueue",
    "build_queue",
    "new_worker_id",
]
