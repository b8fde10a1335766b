"""A real moto S3 server (``moto_server`` subprocess on a free loopback port) for tests.

Load with ``-p tests.s3fixtures`` (or register it in conftest). The server speaks
HTTP like S3 does, so clients go through botocore's real network stack: timeouts,
refused connections and streamed bodies behave as they would against AWS.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.servers import free_port, wait_for

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"


class MotoServer:
    """``moto_server -H 127.0.0.1 -p <port>``; ``env`` adds variables (e.g. auth settings)."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        if not MOTO_SERVER.exists():
            raise RuntimeError(f"{MOTO_SERVER} is missing: install moto[server]")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HYDRA_"))}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_for(self._answers, 20, f"moto_server (log: {self.log_path})")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited; see {self.log_path}")
        # the dashboard is no AWS action: it does not count against INITIAL_NO_AUTH_ACTION_COUNT
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/moto-api/")
            return connection.getresponse().status < 500
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


def s3_client(
    endpoint_url: str, access_key: str = "testing", secret_key: str = "testing", **config: Any
) -> Any:
    """A boto3 S3 client for a moto server (moto accepts any credentials unless told not to)."""
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
    )
    options: dict[str, Any] = {"s3": {"addressing_style": "path"}, **config}
    return session.client("s3", endpoint_url=endpoint_url, config=Config(**options))


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server shared by the session; use your own buckets."""
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    server = MotoServer(log).start()
    yield server.endpoint_url
    server.stop()
