"""Sandbox regions: one forward HTTP proxy per region, each stamping its name.

``python -m crawlers.sandbox.region_proxy eu=8801 us=8802`` runs them in one
process. A region's egress (``HYDRA_REGIONS``) points at its proxy; the proxy
adds ``X-Hydra-Region: <name>`` so the sandbox price API can block one region
after K requests (``--block-region eu=500``), as a site blocks an IP range.
Only loopback targets are forwarded: the sandbox never reaches the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web
from yarl import URL

REGION_HEADER = "X-Hydra-Region"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def region_app(name: str, session: aiohttp.ClientSession, counts: Counter[str]) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        if not raw.startswith(("http://", "https://")):  # addressed to the proxy itself
            return web.json_response({"region": name, "requests": counts[name]})
        target = URL(raw)
        if target.host not in _LOOPBACK:
            return web.Response(status=403, text="the sandbox proxy forwards to loopback only")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[REGION_HEADER] = name
        counts[name] += 1
        body = await request.read()
        async with session.request(request.method, target, headers=headers, data=body) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=data, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(ports: dict[str, int]) -> None:
    counts: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        runners = []
        for name, port in ports.items():
            runner = web.AppRunner(region_app(name, session, counts), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        try:
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()


class RegionProxies:
    """Context manager: the proxies of ``regions`` in one subprocess on free ports."""

    def __init__(self, regions: Sequence[str], ports: dict[str, int] | None = None) -> None:
        from crawlers.sandbox.server import _free_port

        self.ports = dict(ports or {name: _free_port() for name in regions})
        self._proc: subprocess.Popen[bytes] | None = None

    def egress(self, region: str) -> str:
        return f"http://127.0.0.1:{self.ports[region]}"

    def __enter__(self) -> Self:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": str(root)}
        args = [f"{name}={port}" for name, port in self.ports.items()]
        command = [sys.executable, "-m", "crawlers.sandbox.region_proxy", *args]
        self._proc = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        for name in self.ports:
            while True:
                try:
                    self.requests(name)
                    break
                except (urllib.error.URLError, OSError):
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.__exit__(None, None, None)
                        raise RuntimeError("region proxies did not start") from None
                    time.sleep(0.05)
        return self

    def requests(self, region: str) -> int:
        """How many requests the region's proxy forwarded."""
        import json

        with urllib.request.urlopen(self.egress(region) + "/__stats", timeout=2) as answer:
            count: int = json.loads(answer.read())["requests"]
            return count

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str]) -> None:
    ports = {}
    for arg in argv:
        name, _, port = arg.partition("=")
        ports[name] = int(port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(ports))


if __name__ == "__main__":
    main(sys.argv[1:])
