"""The ``/metrics`` server of a process that comes and goes (a worker, an ETL processor).

It serves one registry on ``HYDRA_METRICS_BIND:HYDRA_METRICS_PORT`` (``0``: a free
port) from prometheus-client's server in a daemon thread, says where in the log
(``Metrics on http://host:port/metrics``) and, with ``HYDRA_METRICS_SD_FILE``, adds
itself to that file_sd file until it stops, so Prometheus finds it without a
configuration change. A port already taken is logged, not raised: the process
runs on without metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server

from crawlers.monitoring import sd_file

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

logger = logging.getLogger(__name__)


class MetricsEndpoint:
    def __init__(
        self, registry: CollectorRegistry, *, bind: str, port: int | None, sd_path: str = ""
    ) -> None:
        self.registry = registry
        self.bind = bind
        self.wanted_port = port or 0
        self.sd_path = Path(sd_path) if sd_path else None
        self.server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        #: ``host:port`` as written to the SD file; empty until announced
        self.target = ""

    @property
    def port(self) -> int:
        """The port served on; 0 when not serving."""
        return int(self.server.server_port) if self.server is not None else 0

    def start(self, labels: dict[str, str]) -> bool:
        """Serve, log the address and register in the SD file with ``labels`` (blocking
        file I/O: call it in a thread from an event loop). False if the port was taken."""
        try:
            self.server, self._thread = start_http_server(
                self.wanted_port, addr=self.bind, registry=self.registry
            )
        except OSError as exc:
            logger.error(
                "Metrics server not started on %s:%s: %s", self.bind, self.wanted_port, exc
            )
            return False
        host = self.bind
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        self.target = f"{shown}:{self.port}"
        logger.info("Metrics on http://%s/metrics", self.target)
        if self.sd_path is not None:
            try:
                sd_file.add_target(self.sd_path, self.target, labels)
            except OSError as exc:
                logger.error("Could not add %s to the SD file: %s", self.target, exc)
        return True

    async def stop(self) -> None:
        """Leave the SD file first (Prometheus stops scraping), then close the server."""
        if self.target and self.sd_path is not None:
            try:
                await asyncio.to_thread(sd_file.remove_target, self.sd_path, self.target)
            except OSError as exc:
                logger.warning("Could not remove %s from the SD file: %s", self.target, exc)
        self.target = ""
        server, self.server = self.server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)  # waits for serve_forever's poll
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
