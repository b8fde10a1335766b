"""Run the sandbox shop in a subprocess, like :class:`~crawlers.sandbox.server.SandboxServer`,
so a browser or crawler under test never shares its event loop.

The login password reaches the child through its environment, not its command
line, where ``ps`` and process listings would show it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any, Self

from crawlers.sandbox.server import _REPO_ROOT, _free_port
from crawlers.sandbox.shop import DEFAULT_PAGE_SIZE, DEFAULT_PRODUCTS, PASSWORD_ENV

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


class ShopServer:
    """Context manager owning one sandbox shop process on a loopback port."""

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
        self.products = products
        self.page_size = page_size
        self.api_version = api_version
        self.login_required = login_required
        self.username = username
        self._password = password
        self.initial_fail_next = fail_next
        self._port = port if port is not None else _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody drains could fill up and stall the server.
        self._stderr: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def shop_url(self) -> str:
        """The JS-rendered shop page (API-backed)."""
        return self.base_url + "/shop/"

    @property
    def catalogue_url(self) -> str:
        """The server-rendered catalogue (no API)."""
        return self.base_url + "/catalogue"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("shop server already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p
        )
        env[PASSWORD_ENV] = self._password
        cmd = [sys.executable, "-m", "crawlers.sandbox.shop", "--host", "127.0.0.1"]
        cmd += ["--port", str(self._port), "--products", str(self.products)]
        cmd += ["--page-size", str(self.page_size), "--api-version", str(self.api_version)]
        cmd += ["--fail-next", str(self.initial_fail_next)]
        if self.login_required:
            cmd += ["--login-required", "--username", self.username]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            cmd,
            cwd=_REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"shop exited with {self._proc.returncode}: {self._read_stderr()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"shop not healthy after {_START_TIMEOUT:.0f}s: {self._read_stderr()}"
                )
            time.sleep(0.05)

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

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
