"""pytest plugin: real pyftpdlib servers (plain and explicit FTPS) on free loopback ports.

Each server runs its own IOLoop in a thread (pyftpdlib's default loop is a
process-wide singleton, which two servers, or a server closed by one test and
reused by the next, would share) and is closed with all its connections after
the test.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crawlers.models.fetch_task import FtpSourceConfig
from crawlers.sandbox.tls import self_signed

with warnings.catch_warnings():
    # pyftpdlib 2.2 imports asynchat/asyncore, deprecated since Python 3.11
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

USER = "hydra"
PASSWORD = "s3cr3t-Pa55word"


class NoMlsdHandler(FTPHandler):  # type: ignore[misc]
    """A server that predates RFC 3659: MLSD is answered 502."""

    def ftp_MLSD(self, path: str) -> None:
        self.respond("502 Command not implemented.")


class NoMlsdNoListHandler(NoMlsdHandler):
    """Only NLST is left, as on some stripped-down servers."""

    def ftp_LIST(self, path: str) -> None:
        self.respond("502 Command not implemented.")


@dataclass
class FtpServer:
    host: str
    port: int
    home: Path
    #: every command line the server received (PASS lines masked), in order
    commands: list[str] = field(default_factory=list)
    certfile: Path | None = None
    user: str = USER
    password: str = PASSWORD

    def config(self, **fields: Any) -> FtpSourceConfig:
        """An FtpSourceConfig for this server; ``fields`` override or add extras."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "password": self.password,
            "remote_path": "/",
            "file_pattern": "*",
        }
        values.update(fields)
        return FtpSourceConfig.model_validate(values)

    def received(self, command: str) -> list[str]:
        return [line for line in self.commands if line.upper().startswith(command.upper())]


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1/localhost; key and cert in one PEM."""
    cert, key = self_signed(directory)
    path = directory / "ftps.pem"
    path.write_bytes(key.read_bytes() + cert.read_bytes())
    return path


@contextmanager
def run_ftp_server(
    home: Path,
    *,
    handler: type[FTPHandler] = FTPHandler,
    certfile: Path | None = None,
    **attributes: Any,
) -> Iterator[FtpServer]:
    """Serve ``home`` to USER/PASSWORD (read-only) until the block ends.

    ``handler`` may be a subclass that misbehaves; with ``certfile`` the server
    requires explicit FTPS (AUTH TLS before login, PROT P before transfers)."""
    home.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, str(home), perm="elr")
    commands: list[str] = []

    base: type[FTPHandler] = handler
    settings: dict[str, Any] = {
        "authorizer": authorizer,
        "auth_failed_timeout": 0,  # pyftpdlib otherwise waits 3 s before a 530
        "banner": "hydra test ftp",
    }
    if certfile is not None:
        base = TLS_FTPHandler
        if handler is not FTPHandler:
            base = type("TlsHandler", (handler, TLS_FTPHandler), {})
        settings |= {"certfile": str(certfile), "ssl_context": None}
        settings |= {"tls_control_required": True, "tls_data_required": True}

    def pre_process_command(self: FTPHandler, line: str, cmd: str, arg: str) -> None:
        commands.append("PASS ******" if cmd == "PASS" else line)
        base.pre_process_command(self, line, cmd, arg)

    settings["pre_process_command"] = pre_process_command
    settings.update(attributes)
    handler_class = type("TestHandler", (base,), settings)

    ioloop = IOLoop()
    server = FTPServer(("127.0.0.1", 0), handler_class, ioloop=ioloop)
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name="ftp-server", daemon=True)
    thread.start()
    try:
        host, port = server.address
        yield FtpServer(host, port, home, commands, certfile)
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture(scope="session")
def ftp_certfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificate(tmp_path_factory.mktemp("ftps"))


@pytest.fixture
def ftp_server_factory(tmp_path: Path) -> Iterator[Callable[..., FtpServer]]:
    """``start(handler=..., certfile=..., home=..., **handler_attributes)``; all are
    stopped after the test."""
    numbers = itertools.count()
    with ExitStack() as stack:

        def start(*, home: Path | None = None, **options: Any) -> FtpServer:
            directory = home or tmp_path / f"ftp-home-{next(numbers)}"
            return stack.enter_context(run_ftp_server(directory, **options))

        yield start


@pytest.fixture
def ftp_server(ftp_server_factory: Callable[..., FtpServer]) -> FtpServer:
    return ftp_server_factory()


@pytest.fixture
def ftps_server(ftp_server_factory: Callable[..., FtpServer], ftp_certfile: Path) -> FtpServer:
    return ftp_server_factory(certfile=ftp_certfile)
