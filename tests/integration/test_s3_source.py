"""S3Source against a real moto S3 server: listing, streaming fetch, limits, errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from crawlers.models.fetch_task import S3SourceConfig
from crawlers.sources.base import RemoteFile, SourceError
from crawlers.sources.s3 import S3Source
from tests.s3fixtures import MotoServer, s3_client
from tests.servers import free_port

pytestmark = pytest.mark.integration

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"


def make_source(endpoint: str, bucket: str, **overrides: Any) -> S3Source:
    limits = {
        k: overrides.pop(k) for k in ("max_file_bytes", "max_files", "timeout") if k in overrides
    }
    config = S3SourceConfig.model_validate(
        {
            "bucket": bucket,
            "remote_path": "/data/files/",
            "access_key": ACCESS_KEY,
            "secret_access_key": SECRET,
            "file_pattern": "*.csv",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            **overrides,
        }
    )
    limits.setdefault("max_file_bytes", 1 << 30)
    limits.setdefault("max_files", 1000)
    return S3Source(config, **limits)


async def listing(source: S3Source) -> Any:
    try:
        return await source.list()
    finally:
        await source.close()


async def fetch_one(source: S3Source, remote: RemoteFile, into: Path) -> Any:
    try:
        return await source.fetch(remote, into)
    finally:
        await source.close()


def failure(coroutine: Any) -> SourceError:
    with pytest.raises(SourceError) as caught:
        asyncio.run(coroutine)
    return caught.value


@pytest.fixture
def bucket(moto_s3: str) -> Iterator[tuple[Any, str]]:
    client = s3_client(moto_s3)
    name = f"src-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield client, name
    client.close()


def test_lists_matching_files_in_every_folder(moto_s3: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    keys = [
        "data/files/a.csv",
        "data/files/sub/deep/b.csv",
        "data/files/c.txt",
        "data/files/sub/",  # folder marker
        "data/files/marker.csv/",  # a marker whose name matches the pattern
        "data/filesX/sibling.csv",  # same string prefix, another folder
        "other/d.csv",
    ]
    for key in keys:
        client.put_object(Bucket=name, Key=key, Body=b"1,2\n")
    source = make_source(moto_s3, name, remote_path="/data/files")  # no trailing '/': a folder
    source.page_size = 2  # several pages
    result = asyncio.run(listing(source))
    assert [f.path for f in result.files] == ["a.csv", "sub/deep/b.csv"]
    assert [f.locator for f in result.files] == ["data/files/a.csv", "data/files/sub/deep/b.csv"]
    assert [f.size for f in result.files] == [4, 4]
    assert result.refused == []

    whole = asyncio.run(listing(make_source(moto_s3, name, remote_path="/", file_pattern="*")))
    assert len(whole.files) == 5 and "other/d.csv" in [f.path for f in whole.files]


def test_unsafe_keys_are_refused(moto_s3: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    for key in ["data/files/ok.csv", "data/files/../escape.csv", "data/files//x.csv"]:
        client.put_object(Bucket=name, Key=key, Body=b"x")
    client.put_object(Bucket=name, Key="data/files/bad\x01.csv", Body=b"x")
    result = asyncio.run(listing(make_source(moto_s3, name)))
    assert [f.path for f in result.files] == ["ok.csv"]
    assert len(result.refused) == 3
    refused = "\n".join(result.refused)
    assert "'data/files/../escape.csv'" in refused
    assert "'data/files//x.csv'" in refused
    assert "'data/files/bad\\x01.csv'" in refused  # shown escaped, not raw


def test_fetch_streams_and_hashes(moto_s3: str, bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, name = bucket
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks and a remainder
    client.put_object(Bucket=name, Key="data/files/x.csv", Body=data)
    source = make_source(moto_s3, name)
    remote = asyncio.run(listing(source)).files[0]
    fetched = asyncio.run(fetch_one(make_source(moto_s3, name), remote, tmp_path / "x.csv"))
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.size == len(data)
    assert fetched.local_path.read_bytes() == data


def test_a_large_object_is_fetched_with_bounded_memory(
    moto_s3: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    block, blocks = os.urandom(1 << 20), 64
    upload = tmp_path / "upload.bin"
    digest = hashlib.sha256()
    with open(upload, "wb") as out:
        for _ in range(blocks):
            out.write(block)
            digest.update(block)
    client.upload_file(str(upload), name, "data/files/big.csv")
    source = make_source(moto_s3, name)

    async def fetch_traced() -> tuple[Any, int]:
        try:
            remote = (await source.list()).files[0]  # builds the client (models: megabytes)
            tracemalloc.start()
            fetched = await source.fetch(remote, tmp_path / "big")
            return fetched, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await source.close()

    fetched, peak = asyncio.run(fetch_traced())
    assert fetched.sha256 == digest.hexdigest() and fetched.size == blocks << 20
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 64 MiB object"


def test_max_file_bytes(moto_s3: str, bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="data/files/small.csv", Body=b"x" * 100)
    client.put_object(Bucket=name, Key="data/files/large.csv", Body=b"x" * 2000)
    result = asyncio.run(listing(make_source(moto_s3, name, max_file_bytes=1000)))
    assert [f.path for f in result.files] == ["small.csv"]
    assert result.refused == ["'data/files/large.csv': 2000 bytes, over the 1000 limit"]
    # grown since the listing: refused while fetching, nothing left behind
    remote = RemoteFile(path="large.csv", size=10, locator="data/files/large.csv")
    into = tmp_path / "large.csv"
    error = failure(fetch_one(make_source(moto_s3, name, max_file_bytes=1000), remote, into))
    assert not error.transient and "larger than the 1000 byte limit" in str(error)
    assert not into.exists()


def test_max_files(moto_s3: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    for index in range(3):
        client.put_object(Bucket=name, Key=f"data/files/{index}.csv", Body=b"x")
    assert len(asyncio.run(listing(make_source(moto_s3, name, max_files=3))).files) == 3
    error = failure(listing(make_source(moto_s3, name, max_files=2)))
    assert not error.transient and "more than 2 matching files" in str(error)


def test_missing_bucket_and_key_are_permanent(
    moto_s3: str, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    error = failure(listing(make_source(moto_s3, "no-such-bucket-here")))
    assert not error.transient
    assert str(error) == "S3 bucket 'no-such-bucket-here' does not exist"
    _, name = bucket
    into = tmp_path / "gone.csv"
    remote = RemoteFile(path="gone.csv", locator="data/files/gone.csv")
    error = failure(fetch_one(make_source(moto_s3, name), remote, into))
    assert not error.transient and "'data/files/gone.csv' does not exist" in str(error)
    assert not into.exists()


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    error = failure(listing(make_source(closed, "some-bucket", timeout=2)))
    assert error.transient and closed in str(error)

    server = MotoServer(tmp_path / "moto.log").start()
    try:
        s3_client(server.endpoint_url).create_bucket(Bucket="short-lived")
        source = make_source(server.endpoint_url, "short-lived", timeout=2)

        async def list_stop_list() -> None:
            try:
                await source.list()
                await asyncio.to_thread(server.stop)
                await source.list()
            finally:
                await source.close()

        assert failure(list_stop_list()).transient
    finally:
        server.stop()


class FakeS3:
    """A loopback HTTP server that answers every request with ``reply`` (or never)."""

    def __init__(self, reply: bytes | None, *, hold: bool = False) -> None:
        self.reply = reply
        self.hold = hold  # keep the connection open after the reply
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.settimeout(0.05)
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(connection)
            connection.recv(65536)
            self.requests += 1
            if self.reply is not None:
                connection.sendall(self.reply)
                if not self.hold:
                    connection.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()
        for connection in self.connections:
            connection.close()


def test_5xx_is_transient_and_not_retried_by_botocore() -> None:
    body = (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    head = f"HTTP/1.1 503 Slow Down\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    server = FakeS3(head.encode() + body)
    try:
        error = failure(listing(make_source(server.endpoint_url, "some-bucket")))
        assert error.transient and "SlowDown" in str(error)
        assert server.requests == 1  # Hydra retries; botocore must not
    finally:
        server.close()


def test_read_timeout_is_transient() -> None:
    server = FakeS3(None)
    try:
        error = failure(listing(make_source(server.endpoint_url, "some-bucket", timeout=0.5)))
        assert error.transient and "ReadTimeoutError" in str(error)
        assert server.requests == 1
    finally:
        server.close()


@pytest.mark.parametrize("hold", [False, True], ids=["connection lost", "stalled"])
def test_a_body_cut_short_is_transient_and_leaves_no_file(tmp_path: Path, hold: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    server = FakeS3(head + b"x" * 5000, hold=hold)
    into = tmp_path / "partial.csv"
    try:
        source = make_source(server.endpoint_url, "some-bucket", timeout=0.5)
        error = failure(fetch_one(source, RemoteFile(path="p.csv", locator="p.csv"), into))
        assert error.transient and not into.exists()
    finally:
        server.close()


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that enforces IAM after 3 actions: a user, its key and a bucket."""
    log = tmp_path_factory.mktemp("moto-auth") / "moto_server.log"
    server = MotoServer(log, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()
    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    iam.create_user(UserName="no-policy")
    key = iam.create_access_key(UserName="no-policy")["AccessKey"]
    iam.close()
    client = s3_client(server.endpoint_url)
    client.create_bucket(Bucket="locked")
    client.close()
    yield server.endpoint_url, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    server.stop()


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("unknown", "S3 credentials were refused (unknown access key"),
        ("wrong secret", "S3 credentials were refused (wrong secret"),
        ("no policy", "S3 access to bucket 'locked' was denied"),
    ],
)
def test_refused_credentials_are_permanent_and_masked(
    auth_s3: tuple[str, dict[str, str]], who: str, expected: str
) -> None:
    endpoint, user = auth_s3
    access_key, secret = {
        "unknown": (ACCESS_KEY, SECRET),
        "wrong secret": (user["id"], SECRET),
        "no policy": (user["id"], user["secret"]),
    }[who]
    token = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
    extra = {"session_token": token} if who == "unknown" else {}
    source = make_source(
        endpoint, "locked", access_key=access_key, secret_access_key=secret, **extra
    )
    error = failure(listing(source))
    assert not error.transient and str(error).startswith(expected)
    text = f"{error}{error!r}"
    for secret_text in (secret, access_key, token, user["secret"], user["id"]):
        assert secret_text not in text
    assert access_key[-4:] in text or "***" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"endpoint_url": "ftp://example.com"}, "http(s) URL"),
        ({"endpoint_url": "http://user:pw@example.com"}, "must not hold credentials"),
        ({"endpoint_url": 5}, "must be a string"),
        ({"region": "us east 1"}, "not a region name"),
        ({"session_token": ["x"]}, "session_token must be a string"),
    ],
)
def test_invalid_extras_are_permanent(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError) as caught:
        make_source("http://127.0.0.1:1", "some-bucket", **extra)
    assert not caught.value.transient and message in str(caught.value)
    assert "pw" not in str(caught.value)
