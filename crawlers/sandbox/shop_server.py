"""Run the sandbox shop in a subprocess, like :class:`~crawlers.sandbox.server.SandboxServer`,
so a browser or crawler under test never shares its event loop.

The login password reaches the child through its environment, not its command
line, where ``ps`` and process listings would show it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from crawlers.sandbox.server import SandboxProcess
from crawlers.sandbox.shop import DEFAULT_PAGE_SIZE, DEFAULT_PRODUCTS, PASSWORD_ENV


class ShopServer(SandboxProcess):
    """Context manager owning one sandbox shop process on a loopback port."""

    label = "shop"

    def __init__(
        self,
        *,
        products: int = DEFAULT_PRODUCTS,
        page_size: int = DEFAULT_PAGE_SIZE,
        api_version: int = 1,
        login_required: bool = False,
        username: str = "",
        password: str = "",
        fail_next: int = 0,
        port: int | None = None,
    ) -> None:
        if login_required and not (username and password):
            raise ValueError("login_required needs a username and a password")
        super().__init__(port)
        self.products = products
        self.page_size = page_size
        self.api_version = api_version
        self.login_required = login_required
        self.username = username
        self._password = password
        self.initial_fail_next = fail_next

    @property
    def shop_url(self) -> str:
        """The JS-rendered shop page (API-backed)."""
        return self.base_url + "/shop/"

    @property
    def catalogue_url(self) -> str:
        """The server-rendered catalogue (no API)."""
        return self.base_url + "/catalogue"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "crawlers.sandbox.shop", "--host", "127.0.0.1"]
        cmd += ["--port", str(self._port), "--products", str(self.products)]
        cmd += ["--page-size", str(self.page_size), "--api-version", str(self.api_version)]
        cmd += ["--fail-next", str(self.initial_fail_next)]
        if self.login_required:
            cmd += ["--login-required", "--username", self.username]
        self._launch(cmd, **{PASSWORD_ENV: self._password})

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """``requests``, ``per_path`` (path without query) and ``per_status`` (keys are str)."""
        result: dict[str, Any] = self._request("GET", "/__stats")
        return result

    def reset_stats(self) -> None:
        self._request("POST", "/__stats/reset", {})

    def set_api_version(self, version: int) -> None:
        """Switch the API the page uses (the site change that heal mode must follow)."""
        self._request("POST", "/__admin/api_version", {"version": version})

    def fail_next(self, count: int) -> None:
        """Make the next ``count`` requests under ``/api/`` answer 503."""
        self._request("POST", "/__admin/fail_next", {"count": count})
