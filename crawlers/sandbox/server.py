"""Run the sandbox in a subprocess, so its event loop never competes with the code under test."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from crawlers.sandbox.tls import self_signed

# The directory holding the ``crawlers`` package, so the child can import it.
_REPO_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxProcess:
    """A sandbox app in its own process on a loopback port: start it, wait until its
    ``/healthz`` answers, stop it (terminate, then kill); stderr kept for errors."""

    #: for error messages: "sandbox", "shop"...
    label = "sandbox"

    def __init__(self, port: int | None = None) -> None:
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
        raise NotImplementedError

    def _launch(self, cmd: list[str], **env_extra: str) -> None:
        """Run ``cmd`` with the repository importable, then wait until it is healthy."""
        if self._proc is not None:
            raise RuntimeError(f"{self.label} server already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p
        )
        env.update(env_extra)
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

    def _open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        return urllib.request.urlopen(request, timeout=timeout)

    def _wait_until_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self._proc.returncode}: {self._read_stderr()}"
                )
            try:
                with self._open(self.base_url + "/healthz", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.label} not healthy after {_START_TIMEOUT:.0f}s: {self._read_stderr()}"
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


class SandboxServer(SandboxProcess):
    """Context manager owning one sandbox price API process on a loopback port."""

    def __init__(
        self,
        *,
        refuse_rate: float = 0.0,
        seed: int = 0,
        delay_seconds: float = 0.0,
        fail_ids: frozenset[str] = frozenset(),
        port: int | None = None,
        tls: bool = False,
        block_regions: dict[str, int] | None = None,
    ) -> None:
        super().__init__(port)
        self.block_regions = dict(block_regions or {})
        self.refuse_rate = refuse_rate
        self.seed = seed
        self.delay_seconds = delay_seconds
        self.fail_ids = fail_ids
        self.tls = tls
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def url_template(self) -> str:
        return self.base_url + "/price/{id}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "crawlers.sandbox", "--host", "127.0.0.1"]
        cmd += ["--port", str(self._port), "--refuse-rate", repr(self.refuse_rate)]
        cmd += ["--seed", str(self.seed), "--delay", repr(self.delay_seconds)]
        cmd += ["--fail-ids", ",".join(sorted(self.fail_ids))]
        for name, count in self.block_regions.items():
            cmd += ["--block-region", f"{name}={count}"]
        if self.tls:
            cmd += self._certificate_options()
        self._launch(cmd)

    def _certificate_options(self) -> list[str]:
        self._tls_dir = tempfile.TemporaryDirectory(prefix="sandbox-tls-")
        certfile, keyfile = self_signed(Path(self._tls_dir.name))
        return ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]

    def _open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        context = None
        if self.tls:  # our own throwaway certificate
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def stop(self) -> None:
        super().stop()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    def _request(self, method: str, path: str) -> Any:
        data = b"" if method == "POST" else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        with self._open(req, timeout=5.0) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """The server's counters: ``requests``, ``refused``, ``failed`` and ``per_id``."""
        result: dict[str, Any] = self._request("GET", "/stats")
        return result

    def reset_stats(self) -> None:
        self._request("POST", "/stats/reset")
