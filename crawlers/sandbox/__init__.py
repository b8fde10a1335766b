"""A local, deterministic price API for the demo, benchmarks and tests.

It stands in for a real upstream so crawls can exercise rate limiting (429),
hard failures (503) and latency without touching the network.
"""

from __future__ import annotations

from crawlers.sandbox.price_api import create_app
from crawlers.sandbox.server import SandboxServer

__all__ = ["SandboxServer", "create_app"]
