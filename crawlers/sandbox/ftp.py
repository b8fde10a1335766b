"""A local FTP server for the demo: pyftpdlib's own server in a subprocess, one user."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from crawlers.sandbox.server import _free_port


class FtpSandbox:
    """Serves ``directory`` read-only on a loopback port to user ``demo``."""

    def __init__(self, directory: Path, *, username: str = "demo") -> None:
        self.directory = directory
        self.username = username
        self.password = secrets.token_urlsafe(12)
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        command = [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(self.port)]
        command += ["-u", self.username, "-P", self.password, "-d", str(self.directory)]
        self._proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(3) == b"220":
                        return self
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the FTP sandbox did not start")
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
