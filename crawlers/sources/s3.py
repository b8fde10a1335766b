"""Seed 003's S3 source: list a bucket's folder, then stream each matching object.

The task brings its own credentials (and optionally an S3-compatible
``endpoint_url``, a ``region``, a ``session_token``); they serve this one task's
client and appear in no message. botocore makes one attempt per call: Hydra
retries transient failures itself, with the channel's retry configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
from botocore.config import Config
from pydantic import SecretStr

from crawlers.models.fetch_task import S3SourceConfig
from crawlers.sources.base import (
    FetchedFile,
    Listing,
    RemoteFile,
    SourceError,
    matches_pattern,
    safe_relative_path,
)

CHUNK_BYTES = 1 << 20
_PERMANENT_CODES = {
    "InvalidAccessKeyId": "S3 credentials were refused (unknown access key {key})",
    "SignatureDoesNotMatch": "S3 credentials were refused (wrong secret for access key {key})",
    "InvalidToken": "S3 credentials were refused (invalid session token)",
    "ExpiredToken": "S3 credentials were refused (expired session token)",
    "AccessDenied": "S3 access to bucket {bucket!r} was denied for access key {key}",
    "AllAccessDisabled": "S3 access to bucket {bucket!r} is disabled",
    "NoSuchBucket": "S3 bucket {bucket!r} does not exist",
    "NoSuchKey": "S3 object {object!r} does not exist (any more) in bucket {bucket!r}",
    "InvalidBucketName": "S3 bucket name {bucket!r} is invalid",
    "PermanentRedirect": "S3 bucket {bucket!r} is in another region than {region!r}",
    "AuthorizationHeaderMalformed": "S3 bucket {bucket!r} is in another region than {region!r}",
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}
_TRANSIENT_CODES |= {"RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"}
#: network failures: the endpoint may answer next time
_TRANSIENT_EXCEPTIONS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


class S3Source:
    """One task's S3 bucket folder (``remote_path``, every level below it)."""

    #: keys per listing request (S3 returns at most 1000)
    page_size = 1000

    def __init__(
        self,
        config: S3SourceConfig,
        *,
        max_file_bytes: int,
        max_files: int,
        timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.bucket = config.bucket
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.timeout = timeout
        prefix = config.remote_path.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        extras = config.model_extra or {}
        self.endpoint_url = _text_extra(extras, "endpoint_url")
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SourceError("S3 endpoint_url must be an http(s) URL", transient=False)
            if parts.username or parts.password or parts.query or parts.fragment:
                raise SourceError(
                    "S3 endpoint_url must not hold credentials, a query or a fragment",
                    transient=False,
                )
        self.region = _text_extra(extras, "region")
        if self.region and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.region):
            raise SourceError(f"S3 region {self.region!r} is not a region name", transient=False)
        token = extras.get("session_token")
        if isinstance(token, SecretStr):
            token = token.get_secret_value()
        if token is not None and not isinstance(token, str):
            raise SourceError("S3 session_token must be a string", transient=False)
        self._session_token: str = token or ""
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._build_client)
                except Exception as exc:
                    raise self._error(exc) from None
            return self._client

    def _build_client(self) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=self.config.access_key.get_secret_value(),
            aws_secret_access_key=self.config.secret_access_key.get_secret_value(),
            aws_session_token=self._session_token or None,
            region_name=self.region or None,
        )
        options: dict[str, Any] = {
            # one attempt: Hydra retries, with the channel's settings. Not "max_attempts": 1,
            # which botocore reads as one *retry* (two requests)
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "connect_timeout": self.timeout,
            "read_timeout": self.timeout,
            # AWS_ENDPOINT_URL* in the worker's environment is for its own store, not tasks
            "ignore_configured_endpoint_urls": True,
        }
        if self.endpoint_url:  # S3-compatible servers: path style, no newer checksum headers
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        return session.client(
            "s3", endpoint_url=self.endpoint_url or None, config=Config(**options)
        )

    async def list(self) -> Listing:
        client = await self._s3()
        files: list[RemoteFile] = []
        refused: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        request["MaxKeys"] = self.page_size
        while True:
            page = await self._call(client.list_objects_v2, **request)
            for item in page.get("Contents", []):
                key: str = item["Key"]
                size = int(item.get("Size", 0))
                relative = key[len(self.prefix) :]
                if not key.startswith(self.prefix) or key.endswith("/"):
                    continue  # a "folder" marker (or an odd server's stray key)
                if not matches_pattern(self.config.file_pattern, relative):
                    continue
                if len(files) + len(refused) >= self.max_files:
                    raise SourceError(
                        f"S3 folder s3://{self.bucket}/{self.prefix} holds more than "
                        f"{self.max_files} matching files (HYDRA_FETCH_MAX_FILES)",
                        transient=False,
                    )
                try:
                    safe_relative_path(relative)
                except ValueError as exc:
                    refused.append(f"{key!r}: unsafe name, {exc}")
                    continue
                if size > self.max_file_bytes:
                    refused.append(f"{key!r}: {size} bytes, over the {self.max_file_bytes} limit")
                    continue
                files.append(RemoteFile(path=relative, size=size, locator=key))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return Listing(files=files, refused=refused)
            request["ContinuationToken"] = token

    async def fetch(self, remote: RemoteFile, into: Path) -> FetchedFile:
        client = await self._s3()
        stop = threading.Event()
        download = asyncio.ensure_future(
            asyncio.to_thread(self._download, client, remote, into, stop)
        )
        try:
            digest, size = await asyncio.shield(download)
        except asyncio.CancelledError:
            # the thread must not keep writing `into` after we return: stop it, wait
            stop.set()
            with contextlib.suppress(BaseException):
                await download
            raise
        return FetchedFile(remote=remote, local_path=into, sha256=digest, size=size)

    def _download(
        self, client: Any, remote: RemoteFile, into: Path, stop: threading.Event
    ) -> tuple[str, int]:
        key = remote.locator or self.prefix + remote.path
        try:
            try:
                response = client.get_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                raise self._error(exc, key) from None
            body = response["Body"]
            try:
                length = response.get("ContentLength")
                if length is not None and int(length) > self.max_file_bytes:
                    raise self._too_big(key, int(length))
                digest = hashlib.sha256()
                size = 0
                with open(into, "wb") as out:
                    while not stop.is_set():
                        try:
                            chunk = body.read(CHUNK_BYTES)
                        except Exception as exc:
                            raise self._error(exc, key) from None
                        if not chunk:
                            break
                        size += len(chunk)
                        if size > self.max_file_bytes:
                            raise self._too_big(key, size)
                        digest.update(chunk)
                        out.write(chunk)
                if stop.is_set():
                    raise SourceError(f"fetching S3 object {key!r} was cancelled", transient=True)
                return digest.hexdigest(), size
            finally:
                body.close()
        except BaseException:
            into.unlink(missing_ok=True)
            raise

    async def close(self) -> None:
        async with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, **kwargs)
        except Exception as exc:
            raise self._error(exc) from None

    def _too_big(self, key: str, size: int) -> SourceError:
        return SourceError(
            f"S3 object {key!r} is larger than the {self.max_file_bytes} byte limit "
            f"({size} bytes or more)",
            transient=False,
        )

    def _error(self, exc: Exception, key: str = "") -> SourceError:
        """A message safe to show: our own words, the error code, no credential or URL."""
        if isinstance(exc, SourceError):
            return exc
        where = f"S3 endpoint {self._endpoint()}"
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _PERMANENT_CODES:
                message = _PERMANENT_CODES[code].format(
                    bucket=self.bucket, key=self._masked_key(), object=key, region=self.region
                )
                return SourceError(message, transient=False)
            transient = code in _TRANSIENT_CODES or status >= 500 or status in (408, 429)
            detail = self._scrub(str(error.get("Message", "")))
            return SourceError(
                f"{where} answered {code or status} for bucket {self.bucket!r}"
                + (f": {detail}" if detail else ""),
                transient=transient,
            )
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return SourceError(
                f"S3 request refused before sending (bucket {self.bucket!r}): "
                f"{self._scrub(str(exc))}",
                transient=False,
            )
        if isinstance(exc, botocore.exceptions.NoCredentialsError | ValueError):
            return SourceError(
                f"S3 client could not be set up: {type(exc).__name__}", transient=False
            )
        if isinstance(exc, _TRANSIENT_EXCEPTIONS):
            return SourceError(f"{where} failed: {type(exc).__name__}", transient=True)
        return SourceError(
            f"{where} failed: {type(exc).__name__}: {self._scrub(str(exc))}", transient=True
        )

    def _endpoint(self) -> str:
        if not self.endpoint_url:
            return "(AWS)"
        parts = urlsplit(self.endpoint_url)
        return f"{parts.scheme}://{parts.netloc}"

    def _masked_key(self) -> str:
        key = self.config.access_key.get_secret_value()
        return f"***{key[-4:]}" if len(key) >= 16 else "***"

    def _scrub(self, text: str) -> str:
        config = self.config
        for secret in (config.secret_access_key, config.access_key, SecretStr(self._session_token)):
            if secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "***")
        return _URL.sub("<url>", text)[:300]


def _text_extra(extras: dict[str, Any], name: str) -> str:
    value = extras.get(name)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise SourceError(f"S3 {name} must be a string", transient=False)
    return value.strip()
