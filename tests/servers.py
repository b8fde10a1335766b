"""Real servers for tests, each on a free loopback port, started and stopped by fixtures."""

from __future__ import annotations

from crawlers.sandbox.redis_server import RedisServer, wait_for
from crawlers.sandbox.server import _free_port as free_port

__all__ = ["RedisServer", "free_port", "wait_for"]
