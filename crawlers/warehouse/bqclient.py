"""What the BigQuery sink and the ID reader share: table URIs, identifiers, the client.

Identifiers end up in SQL (backquoted) and in REST paths, so each is checked
against BigQuery's own rules, narrowed to ASCII: a name that could close a quote
or start another statement is refused before any request is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud import bigquery

_IDENTIFIERS = {
    # project IDs are lower-case letters, digits and hyphens; the emulator and older
    # projects also use capitals and underscores
    "project": re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"),
    "dataset": re.compile(r"[A-Za-z0-9_]{1,1024}"),
    "table": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,1023}"),
    "column": re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}"),
}

#: the longest ``insertId`` BigQuery takes; longer row keys are hashed
MAX_INSERT_ID = 128


def check_identifier(kind: str, value: str) -> str:
    """``value`` if it is a valid BigQuery ``kind`` name (project, dataset, table, column)."""
    if not _IDENTIFIERS[kind].fullmatch(value):
        raise ValueError(
            f"invalid BigQuery {kind} name {value!r}: letters, digits and underscores only"
            + (" (and hyphens)" if kind in ("project", "table") else "")
        )
    return value


@dataclass(frozen=True, slots=True)
class TableRef:
    project: str
    dataset: str
    table: str

    def __post_init__(self) -> None:
        check_identifier("project", self.project)
        check_identifier("dataset", self.dataset)
        check_identifier("table", self.table)

    @property
    def path(self) -> str:
        """``project.dataset.table``, as the client's methods take it."""
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def sql(self) -> str:
        """The table quoted for a query (every part was validated)."""
        return f"`{self.path}`"

    @property
    def uri(self) -> str:
        return f"bigquery://{self.project}/{self.dataset}.{self.table}"

    @classmethod
    def parse(cls, netloc: str, path: str, uri: str) -> TableRef:
        """From ``bigquery://project/dataset.table``'s host and path."""
        dataset, dot, table = path.strip("/").partition(".")
        if not netloc or not dot:
            raise ValueError(f"expected bigquery://project/dataset.table, got {uri!r}")
        return cls(netloc, dataset, table)


def make_client(project: str, endpoint: str = "") -> bigquery.Client:
    """A client for ``project``: with ``endpoint`` (an emulator), anonymous credentials
    against it; otherwise Google's API with Application Default Credentials.

    Finding default credentials may reach the metadata server: call it in a thread.
    """
    try:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery
    except ImportError as exc:  # pragma: no cover - the extra is part of dev
        raise ImportError(
            "BigQuery needs google-cloud-bigquery: pip install 'hydra-crawlers[bigquery]'"
        ) from exc
    if endpoint:
        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=endpoint),
        )
    return bigquery.Client(project=project)


def close_client(client: bigquery.Client) -> None:
    """Close the client's HTTP session (blocking, quick)."""
    client.close()  # type: ignore[no-untyped-call]


def short_retry(seconds: float) -> Retry:
    """The client's default retry (5xx, rate limits, connection errors), for at most
    ``seconds`` instead of its 600: an unreachable server fails fast and the caller
    retries on its own schedule."""
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(seconds)
