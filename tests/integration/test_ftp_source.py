"""FtpSource against real pyftpdlib servers: listing (MLSD, LIST, NLST), fetching,
limits, errors, FTPS, and hostile listings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler

from crawlers.sources.base import Listing, RemoteFile, SourceError
from crawlers.sources.ftp import FtpSource
from tests.ftpfixtures import PASSWORD, FtpServer, NoMlsdHandler, NoMlsdNoListHandler
from tests.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Factory = Callable[..., FtpServer]


def run(source: FtpSource, scenario: Callable[[FtpSource], Awaitable[T]]) -> T:
    """Run ``scenario`` on ``source`` in a fresh event loop, closing the source after."""

    async def main() -> T:
        try:
            return await scenario(source)
        finally:
            await source.close()

    return asyncio.run(main())


def source(server: FtpServer, *, max_file_bytes: int = 10**6, max_files: int = 100,
           timeout: float = 5.0, **config: Any) -> FtpSource:  # fmt: skip
    limits = {"max_file_bytes": max_file_bytes, "max_files": max_files}
    return FtpSource(server.config(**config), **limits, timeout=timeout)


def listing_of(src: FtpSource) -> Listing:
    return run(src, lambda s: s.list())


def tree(home: Path) -> None:
    """home/data/{a.csv, b.txt, sub/other.csv, sub/dir/file.csv}, home/escape.txt."""
    (home / "data" / "sub" / "dir").mkdir(parents=True)
    (home / "data" / "a.csv").write_bytes(b"a,b\n1,2\n")
    (home / "data" / "b.txt").write_bytes(b"not csv")
    (home / "data" / "sub" / "other.csv").write_bytes(b"x" * 1000)
    (home / "data" / "sub" / "dir" / "file.csv").write_bytes(b"nested\n")
    (home / "escape.txt").write_bytes(b"outside remote_path")


@pytest.mark.parametrize(
    ("handler", "command"),
    [(FTPHandler, "MLSD"), (NoMlsdHandler, "LIST"), (NoMlsdNoListHandler, "NLST")],
)
def test_lists_every_folder_by_pattern(
    ftp_server_factory: Factory, tmp_path: Path, handler: type[FTPHandler], command: str
) -> None:
    tree(tmp_path / "home")
    server = ftp_server_factory(home=tmp_path / "home", handler=handler)
    listing = listing_of(source(server, remote_path="/data", file_pattern="*.csv"))
    assert [(f.path, f.size) for f in listing.files] == [
        ("a.csv", 8),
        ("sub/dir/file.csv", 7),
        ("sub/other.csv", 1000),
    ]
    assert listing.files[1].locator == "/data/sub/dir/file.csv"
    assert listing.refused == []
    assert len(server.received(command)) == 3  # one per folder
    assert len(server.received("MLSD")) == (3 if command == "MLSD" else 1)  # 502 remembered
    assert len(server.received("USER")) == 1


def test_fetch_streams_content_and_hash(ftp_server: FtpServer, tmp_path: Path) -> None:
    tree(ftp_server.home)
    src = source(ftp_server, remote_path="/data", file_pattern="*.csv")

    async def scenario(s: FtpSource) -> list[tuple[str, bytes, str, int]]:
        fetched = []
        for n, remote in enumerate((await s.list()).files):
            got = await s.fetch(remote, tmp_path / f"out{n}")
            fetched.append((remote.path, got.local_path.read_bytes(), got.sha256, got.size))
        return fetched

    for path, content, sha256, size in run(src, scenario):
        expected = (ftp_server.home / "data" / path).read_bytes()
        assert content == expected
        assert sha256 == hashlib.sha256(expected).hexdigest()
        assert size == len(expected)
    assert len(ftp_server.received("USER")) == 1  # one control connection throughout
    assert ftp_server.received("QUIT")


_BIG_CLIENT = """
import asyncio, json, pathlib, sys, tracemalloc
from crawlers.models.fetch_task import FtpSourceConfig
from crawlers.sources.ftp import FtpSource

async def main():
    config = FtpSourceConfig.model_validate(json.loads(sys.argv[1]))
    source = FtpSource(config, max_file_bytes=1 << 40, max_files=10)
    listing = await source.list()
    tracemalloc.start()  # every Python allocation from here, in every thread
    got = await source.fetch(listing.files[0], pathlib.Path(sys.argv[2]))
    peak = tracemalloc.get_traced_memory()[1]
    await source.close()
    print(json.dumps({"sha256": got.sha256, "size": got.size, "peak": peak}))

asyncio.run(main())
"""


def test_large_file_is_streamed_with_flat_memory(ftp_server: FtpServer, tmp_path: Path) -> None:
    size = 64 * 2**20
    with (ftp_server.home / "big.bin").open("wb") as sparse:
        sparse.truncate(size)
    config = {"host": ftp_server.host, "port": ftp_server.port, "username": ftp_server.user,
              "password": ftp_server.password, "file_pattern": "big.bin"}  # fmt: skip
    out = tmp_path / "big.out"
    process = subprocess.run(
        [sys.executable, "-c", _BIG_CLIENT, json.dumps(config), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout)
    zeros = hashlib.sha256()
    for _ in range(64):
        zeros.update(bytes(2**20))
    assert result["size"] == size == out.stat().st_size
    assert result["sha256"] == zeros.hexdigest()
    assert result["peak"] < 4 * 2**20, result  # a 64 MiB file through a few 256 KiB chunks


def test_max_file_bytes_in_listing_and_while_streaming(
    ftp_server: FtpServer, tmp_path: Path
) -> None:
    (ftp_server.home / "big.bin").write_bytes(b"x" * 5000)
    (ftp_server.home / "small.bin").write_bytes(b"y" * 10)
    src = source(ftp_server, max_file_bytes=4096)
    out = tmp_path / "big.out"

    async def scenario(s: FtpSource) -> tuple[Listing, SourceError, bytes]:
        listing = await s.list()
        with pytest.raises(SourceError) as caught:  # a size the listing did not give
            await s.fetch(RemoteFile("big.bin"), out)
        small = await s.fetch(listing.files[0], tmp_path / "small.out")  # reconnects
        return listing, caught.value, small.local_path.read_bytes()

    listing, error, small = run(src, scenario)
    assert [f.path for f in listing.files] == ["small.bin"]
    assert listing.refused == ["big.bin: 5000 bytes, over 4096"]
    assert not error.transient and "4096 byte limit" in str(error)
    assert not out.exists()
    assert small == b"y" * 10


def test_too_many_files_is_permanent(ftp_server: FtpServer) -> None:
    for n in range(4):
        (ftp_server.home / f"f{n}.csv").write_bytes(b"1")
    with pytest.raises(SourceError, match="more than 3 files") as caught:
        listing_of(source(ftp_server, max_files=3))
    assert not caught.value.transient


def test_bad_password_is_permanent_and_not_shown(ftp_server: FtpServer) -> None:
    wrong = "Wr0ng-" + PASSWORD
    with pytest.raises(SourceError) as caught:
        listing_of(source(ftp_server, password=wrong))
    message = str(caught.value)
    assert not caught.value.transient
    assert "log in failed" in message and "530" in message and ftp_server.host in message
    assert wrong not in message and PASSWORD not in message
    assert caught.value.__cause__ is None


def test_missing_remote_path_is_permanent(ftp_server: FtpServer) -> None:
    with pytest.raises(SourceError, match=r"'/nowhere'.*550") as caught:
        listing_of(source(ftp_server, remote_path="/nowhere"))
    assert not caught.value.transient
    assert PASSWORD not in str(caught.value)


def test_server_down_is_transient(ftp_server: FtpServer) -> None:
    src = FtpSource(ftp_server.config(port=free_port()), max_file_bytes=1, max_files=1)
    with pytest.raises(SourceError, match="connect failed") as caught:
        listing_of(src)
    assert caught.value.transient


def test_silent_server_times_out_transiently(ftp_server: FtpServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never greets
        config = ftp_server.config(port=silent.getsockname()[1])
        src = FtpSource(config, max_file_bytes=1, max_files=1, timeout=0.3)
        with pytest.raises(SourceError, match=r"no answer within 0\.3 s") as caught:
            listing_of(src)
    assert caught.value.transient


def test_421_is_transient_and_the_next_call_reconnects(ftp_server_factory: Factory) -> None:
    server = ftp_server_factory(timeout=1)  # the server hangs up idle clients with a 421
    (server.home / "a.csv").write_bytes(b"1")

    async def scenario(s: FtpSource) -> tuple[Listing, SourceError, Listing]:
        first = await s.list()
        await asyncio.sleep(1.5)
        with pytest.raises(SourceError) as caught:
            await s.list()
        return first, caught.value, await s.list()

    first, error, again = run(source(server), scenario)
    assert error.transient and "421" in str(error), error
    assert first == again and [f.path for f in again.files] == ["a.csv"]
    assert len(server.received("USER")) == 2


def test_ftps_protects_both_channels(
    ftps_server: FtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ftps_server.home / "a.csv").write_bytes(b"secret data")
    assert ftps_server.certfile is not None

    async def scenario(s: FtpSource) -> bytes:
        remote = (await s.list()).files[0]
        return (await s.fetch(remote, tmp_path / "a.out")).local_path.read_bytes()

    with monkeypatch.context() as env:  # how an operator trusts a private CA
        env.setenv("SSL_CERT_FILE", str(ftps_server.certfile))
        trusted = source(ftps_server, tls=True)
    assert run(trusted, scenario) == b"secret data"
    assert ftps_server.received("AUTH TLS") and ftps_server.received("PROT P")
    # explicit opt-out of verification ("ftps" is the alias of "tls")
    assert run(source(ftps_server, ftps=True, tls_verify=False), scenario) == b"secret data"


def test_ftps_untrusted_certificate_is_permanent(ftps_server: FtpServer) -> None:
    with pytest.raises(SourceError, match=r"TLS handshake.*certificate not trusted") as caught:
        listing_of(source(ftps_server, tls=True))  # the system's trust store
    assert not caught.value.transient


INJECTED = ["../escape.txt", "/abs.txt", "a\x00b.txt", "c\\d.txt", "x/../../escape.txt"]


class HostileFS(AbstractedFS):  # type: ignore[misc]
    """Lists names that point outside remote_path next to the real files of /data."""

    def _hostile(self, path: str) -> bool:
        return os.path.basename(path.rstrip("/")) == "data"

    def listdir(self, path: str) -> list[str]:
        names: list[str] = super().listdir(path)
        return names + INJECTED if self._hostile(path) else names

    def format_mlsx(self, basedir: str, listing: list[str], *args: Any, **kw: Any) -> Any:
        real = [name for name in listing if name not in INJECTED]  # os.stat() chokes on NUL
        yield from super().format_mlsx(basedir, real, *args, **kw)
        if self._hostile(basedir):
            yield b"type=dir;size=0; ../up\r\n"
            for name in INJECTED:
                yield f"type=file;size=5; {name}\r\n".encode()

    def format_list(self, basedir: str, listing: list[str], *args: Any, **kw: Any) -> Any:
        real = [name for name in listing if name not in INJECTED]
        yield from super().format_list(basedir, real, *args, **kw)
        if self._hostile(basedir):
            yield b"drwxr-xr-x   2 owner group 0 Jan 01 12:00 ../up\r\n"
            for name in INJECTED:
                yield f"-rw-r--r--   1 owner group 5 Jan 01 12:00 {name}\r\n".encode()


@pytest.mark.parametrize("handler", [FTPHandler, NoMlsdHandler, NoMlsdNoListHandler])
def test_unsafe_names_are_refused_and_never_fetched(
    ftp_server_factory: Factory, tmp_path: Path, handler: type[FTPHandler]
) -> None:
    tree(tmp_path / "home")
    hostile = type("Hostile", (handler,), {"abstracted_fs": HostileFS})
    server = ftp_server_factory(home=tmp_path / "home", handler=hostile)
    src = source(server, remote_path="/data/", file_pattern="*")

    async def scenario(s: FtpSource) -> tuple[Listing, SourceError]:
        listing = await s.list()
        for n, remote in enumerate(listing.files):
            await s.fetch(remote, tmp_path / f"out{n}")
        with pytest.raises(SourceError) as caught:
            await s.fetch(RemoteFile("../escape.txt", locator="/escape.txt"), tmp_path / "x")
        return listing, caught.value

    listing, error = run(src, scenario)
    assert [f.path for f in listing.files] == [
        "a.csv", "b.txt", "sub/dir/file.csv", "sub/other.csv"
    ]  # fmt: skip
    reasons = dict(line.split(": ", 1) for line in listing.refused)
    expected = {"../escape.txt", "/abs.txt", "a\\x00b.txt", "c\\d.txt", "x/../../escape.txt"}
    if handler is not NoMlsdNoListHandler:
        expected.add("../up")  # NLST only names what listdir() does
    assert set(reasons) == expected, listing.refused
    assert reasons["../escape.txt"] == "has an empty, '.' or '..' part"
    assert reasons["/abs.txt"] == "is absolute"
    assert reasons["c\\d.txt"] == "holds a backslash"
    assert "control characters" in reasons["a\\x00b.txt"]
    assert not error.transient and "refused to fetch" in str(error)
    assert sorted(server.received("RETR")) == [
        "RETR /data/a.csv", "RETR /data/b.txt",
        "RETR /data/sub/dir/file.csv", "RETR /data/sub/other.csv",
    ]  # fmt: skip
    sent = [line for line in server.commands if line != "PASS ******"]
    assert not [line for line in sent if "escape" in line or "abs" in line or ".." in line]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"port": 70000}, "port"),
        ({"port": "ftp"}, "port"),
        ({"port": True}, "port"),
        ({"tls": "yes"}, "tls/ftps must be true or false"),
        ({"tls": True, "ftps": False}, "disagree"),
        ({"passive": 1}, "passive"),
        ({"encoding": "klingon"}, "encoding"),
        ({"remote_path": "/a\r\nDELE x"}, "remote_path holds control"),
    ],
)
def test_bad_options_are_refused_up_front(
    ftp_server: FtpServer, extra: dict[str, Any], problem: str
) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match=problem) as caught:
        source(ftp_server, **extra)
    assert not caught.value.transient
    assert time.monotonic() - started < 1
    assert ftp_server.commands == []  # nothing was sent
