"""LocalStore on disk and S3Store against a real moto S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from crawlers.config import project_path
from crawlers.stores import build_store
from crawlers.stores.local import LocalStore
from crawlers.stores.s3 import S3Store
from tests.s3fixtures import s3_client
from tests.servers import free_port

pytestmark = pytest.mark.integration

UNSAFE_KEYS = ["../escape.csv", "chan/../../escape.csv", "/abs.csv", "chan//x.csv", "", "a\x00b"]


async def put_all(store: Any, puts: list[tuple[Path, str]]) -> None:
    await store.open()
    try:
        for local_path, key in puts:
            await store.put(local_path, key)
    finally:
        await store.close()


def a_file(folder: Path, data: bytes, name: str = "in.bin") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# -- LocalStore ----------------------------------------------------------------------------


def test_local_store_uris(tmp_path: Path) -> None:
    assert LocalStore.from_uri(f"file://{tmp_path}/store").root == tmp_path / "store"
    assert LocalStore.from_uri("file://output/my%20store").root == project_path("output/my store")
    store = LocalStore.from_crawler(get_crawler(), f"file://{tmp_path}/store")
    assert store.folder_uri("chan/job") == f"file://{tmp_path}/store/chan/job/"
    assert store.folder_uri("") == f"file://{tmp_path}/store/"
    with pytest.raises(ValueError):
        LocalStore.from_uri("file://")
    crawler = get_crawler(settings_dict={"HYDRA_STORE_URI": f"file://{tmp_path}/s"})
    assert isinstance(build_store(crawler), LocalStore)


def test_local_store_puts_atomically_and_idempotently(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore.from_uri(f"file://{root}")
    first, second = a_file(tmp_path, b"first"), a_file(tmp_path, b"second", "second.bin")
    asyncio.run(put_all(store, [(first, "chan/job/a/b.csv"), (first, "chan/job/a/b.csv")]))
    target = root / "chan/job/a/b.csv"
    assert target.read_bytes() == b"first"
    asyncio.run(put_all(store, [(second, "chan/job/a/b.csv")]))  # a redelivered job
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["b.csv"]  # no temporary file left
    assert first.read_bytes() == b"first"  # copied, not moved


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_local_store_refuses_escaping_keys(tmp_path: Path, key: str) -> None:
    store = LocalStore.from_uri(f"file://{tmp_path}/store")
    source = a_file(tmp_path, b"x")
    with pytest.raises(ValueError, match="refused"):
        asyncio.run(put_all(store, [(source, key)]))
    assert not (tmp_path / "escape.csv").exists() and not Path("/abs.csv").exists()


def test_local_store_refuses_a_symlink_out_of_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "chan").symlink_to(outside)
    store = LocalStore.from_uri(f"file://{root}")
    with pytest.raises(ValueError, match="leaves"):
        asyncio.run(put_all(store, [(a_file(tmp_path, b"x"), "chan/job/x.csv")]))
    assert list(outside.rglob("*.csv")) == []


# -- S3Store -------------------------------------------------------------------------------


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The worker's own credentials, from the environment only (no profile files)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store_bucket(moto_s3: str, aws_environment: None) -> Iterator[tuple[Any, str]]:
    client = s3_client(moto_s3)
    name = f"store-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield client, name
    client.close()


def s3_store(moto_s3: str, uri: str) -> S3Store:
    crawler = get_crawler(settings_dict={"HYDRA_STORE_URI": uri, "HYDRA_S3_ENDPOINT_URL": moto_s3})
    store = build_store(crawler)
    assert isinstance(store, S3Store)
    return store


def test_s3_store_uris(aws_environment: None) -> None:
    store = S3Store.from_uri("s3://bucket-name/fetched/files/")
    assert (store.bucket, store.prefix) == ("bucket-name", "fetched/files")
    assert store.folder_uri("chan/job") == "s3://bucket-name/fetched/files/chan/job/"
    assert store.folder_uri("/chan/job/") == "s3://bucket-name/fetched/files/chan/job/"
    assert S3Store.from_uri("s3://bucket-name").folder_uri("c/j") == "s3://bucket-name/c/j/"
    for bad in ("s3:///prefix", "s3://user:pw@bucket/x", "s3://bucket/a/../b", "file:///x"):
        with pytest.raises(ValueError):
            S3Store.from_uri(bad)


def test_s3_store_open_sends_no_request(aws_environment: None) -> None:
    store = S3Store.from_uri("s3://bucket-name/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    asyncio.run(put_all(store, []))  # nothing listens there: any request would fail


def test_s3_store_puts_and_overwrites(
    store_bucket: tuple[Any, str], moto_s3: str, tmp_path: Path
) -> None:
    client, name = store_bucket
    store = s3_store(moto_s3, f"s3://{name}/fetched")
    first, second = a_file(tmp_path, b"first"), a_file(tmp_path, b"second", "second.bin")
    asyncio.run(put_all(store, [(first, "chan/job/a/b.csv"), (first, "chan/job/a/b.csv")]))
    key = "fetched/chan/job/a/b.csv"
    assert client.get_object(Bucket=name, Key=key)["Body"].read() == b"first"
    asyncio.run(put_all(store, [(second, "chan/job/a/b.csv")]))
    assert client.get_object(Bucket=name, Key=key)["Body"].read() == b"second"
    listed = client.list_objects_v2(Bucket=name)["Contents"]
    assert [item["Key"] for item in listed] == [key]
    assert store.folder_uri("chan/job") == f"s3://{name}/fetched/chan/job/"
    assert moto_s3 in store.describe()


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_s3_store_refuses_escaping_keys(
    store_bucket: tuple[Any, str], moto_s3: str, tmp_path: Path, key: str
) -> None:
    client, name = store_bucket
    store = s3_store(moto_s3, f"s3://{name}/fetched")
    with pytest.raises(ValueError, match="refused"):
        asyncio.run(put_all(store, [(a_file(tmp_path, b"x"), key)]))
    assert "Contents" not in client.list_objects_v2(Bucket=name)


def test_s3_store_uploads_a_large_file_in_parts(
    store_bucket: tuple[Any, str], moto_s3: str, tmp_path: Path
) -> None:
    client, name = store_bucket
    data = os.urandom(20 << 20)
    store = s3_store(moto_s3, f"s3://{name}/fetched")
    asyncio.run(put_all(store, [(a_file(tmp_path, data), "chan/job/big.bin")]))
    key = "fetched/chan/job/big.bin"
    head = client.head_object(Bucket=name, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # multipart: 8 + 8 + 4 MiB
    body = client.get_object(Bucket=name, Key=key)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_s3_store_missing_bucket_fails(aws_environment: None, moto_s3: str, tmp_path: Path) -> None:
    store = s3_store(moto_s3, "s3://no-such-store-bucket/fetched")
    with pytest.raises(Exception, match=r"NoSuchBucket|does not exist"):
        asyncio.run(put_all(store, [(a_file(tmp_path, b"x"), "chan/job/x.csv")]))
