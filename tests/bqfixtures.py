"""A real BigQuery emulator (``local-bigquery`` on free loopback ports) for tests.

``local-bigquery`` 0.3.2 is the most faithful of the emulators on PyPI: streaming
inserts with ``insertId`` dedup, per-row ``insertErrors``, queries with paged
results. It needs Python >= 3.13 and is only a server, so it lives in its own venv,
``.bqemu/`` at the repo root, built by ``make .stamps/bqemulator`` (``make test``
builds it). It runs on DuckDB, whose extensions (ducklake, icu, spatial) cannot be
downloaded here: the venv has them as PyPI wheels, and each session imports them
into a private ``$HOME/.duckdb`` that the emulators it starts use.

Tests talk to it with the real ``google-cloud-bigquery`` client over HTTP, as they
would to Google: anonymous credentials, ``api_endpoint`` pointed at the emulator.
"""

from __future__ import annotations

import http.client
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BQEMU = ROOT / ".bqemu"
EXTENSIONS = ("ducklake", "icu", "spatial")
PROJECT = "test-proj"


def prepare_duckdb_home(home: Path) -> Path:
    """Install the emulator's DuckDB extensions (from their wheels) under ``home``."""
    python = BQEMU / "bin" / "python"
    if not (BQEMU / "bin" / "local-bigquery").exists():
        raise RuntimeError(
            f"{BQEMU} has no local-bigquery: run `make .stamps/bqemulator` (`make test` does)"
        )
    home.mkdir(parents=True, exist_ok=True)
    script = f"import duckdb_extensions as d\nfor n in {EXTENSIONS!r}: d.import_extension(n)\n"
    subprocess.run(
        [str(python), "-c", script],
        env={**_clean_environment(), "HOME": str(home)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return home


def _clean_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HYDRA_", "GOOGLE_")) and not name.lower().endswith("_proxy")
    }


def bigquery_client(endpoint: str, project: str = PROJECT) -> bigquery.Client:
    """A real client for an emulator: anonymous credentials, the emulator's endpoint."""
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=endpoint),
    )


class BigQueryEmulator:
    """``local-bigquery serve`` in ``workdir``; ``stop()`` then ``start()`` keeps its data
    and its port, so clients pointed at it see the same server come back."""

    def __init__(self, workdir: Path, home: Path, project: str = PROJECT) -> None:
        self.workdir = workdir
        self.home = home
        self.project = project
        self.port = free_port()
        self.grpc_port = free_port()
        self.data_dir = workdir / "data"
        self.log_path = workdir / "local-bigquery.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> bigquery.Client:
        return bigquery_client(self.endpoint, self.project)

    def start(self) -> BigQueryEmulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [str(BQEMU / "bin" / "local-bigquery"), "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        command += ["--project", self.project, "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**_clean_environment(), "HOME": str(self.home)},
                cwd=self.workdir,
            )
        try:
            wait_for(self._answers, 60, f"local-bigquery (log: {self.log_path})")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"local-bigquery exited; see {self.log_path}")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", f"/bigquery/v2/projects/{self.project}/datasets")
            return connection.getresponse().status == 200
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def bigquery_duckdb_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``$HOME`` whose ``.duckdb`` holds the emulator's extensions, for the session."""
    return prepare_duckdb_home(tmp_path_factory.mktemp("bqhome"))


@pytest.fixture(scope="session")
def bigquery_emulator(
    tmp_path_factory: pytest.TempPathFactory, bigquery_duckdb_home: Path
) -> Iterator[BigQueryEmulator]:
    """One emulator shared by the session (project ``test-proj``); use your own datasets."""
    emulator = BigQueryEmulator(tmp_path_factory.mktemp("bigquery"), bigquery_duckdb_home)
    emulator.start()
    yield emulator
    emulator.stop()
