"""S3 store: ``s3://bucket/prefix``, files at ``prefix/{channel_id}/{job_id}/{path}``.

The worker's own credentials come from boto3's default chain (``AWS_ACCESS_KEY_ID``...,
an instance role), never from a task; ``HYDRA_S3_ENDPOINT_URL`` points it at an
S3-compatible server. Uploads go through ``upload_file``: multipart above 8 MiB,
read from disk part by part, so memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from crawlers.config import HydraConfig, redact_url
from crawlers.sources.base import safe_relative_path

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

#: parts of 8 MiB, 4 at once: at most ~32 MiB of a file in memory
TRANSFER = TransferConfig(
    multipart_threshold=8 << 20,
    multipart_chunksize=8 << 20,
    max_concurrency=4,
)
# parts held in memory per upload (s3transfer's default 10): 4 x 8 MiB, whatever the size;
# boto3's TransferConfig does not take it as an argument
TRANSFER.max_in_memory_upload_chunks = 4


class S3Store:
    """Puts files as objects; putting a key again overwrites it (idempotent)."""

    def __init__(
        self, uri: str, bucket: str, prefix: str, *, endpoint_url: str = "", timeout: float = 60.0
    ) -> None:
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self._client: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> S3Store:
        return cls.from_uri(uri, endpoint_url=HydraConfig.from_crawler(crawler).s3_endpoint_url)

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str = "") -> S3Store:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc or parts.query or "@" in parts.netloc:
            raise ValueError(f"S3 store URI must be s3://bucket/prefix: {uri!r}")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                safe_relative_path(prefix)
            except ValueError as exc:
                raise ValueError(f"S3 store prefix {prefix!r} {exc}") from None
        return cls(uri, parts.netloc, prefix, endpoint_url=endpoint_url.strip())

    async def open(self) -> None:
        await self._s3()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._build_client)
            return self._client

    def _build_client(self) -> Any:
        """Builds the client only: reading config and credentials, no request sent."""
        options: dict[str, Any] = {
            "retries": {"mode": "standard", "total_max_attempts": 3},
            "connect_timeout": self.timeout,
            "read_timeout": self.timeout,
        }
        if self.endpoint_url:  # S3-compatible servers: path style, no newer checksum headers
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url or None, config=Config(**options)
        )

    def object_key(self, key: str) -> str:
        try:
            safe_relative_path(key)
        except ValueError as exc:
            raise ValueError(f"store key {key!r} refused: {exc}") from None
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, local_path: Path, key: str) -> None:
        object_key = self.object_key(key)
        client = await self._s3()
        await asyncio.to_thread(
            client.upload_file, str(local_path), self.bucket, object_key, Config=TRANSFER
        )

    def folder_uri(self, key_prefix: str) -> str:
        prefix = key_prefix.strip("/")
        folder = self.object_key(prefix) if prefix else self.prefix
        return f"s3://{self.bucket}/{folder}/" if folder else f"s3://{self.bucket}/"

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def describe(self) -> str:
        where = f" at {redact_url(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"
