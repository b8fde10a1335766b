"""Items Hydra spiders produce; pipelines see them through itemadapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PriceItem:
    """One fetched price (seed 000): the row that sinks store."""

    run_id: str
    batch_id: str
    id: str
    data: Any
    fetched_at: str
    region: str
    attempt: int


@dataclass
class FetchedFileItem:
    """A file a fetch job fetched (seed 003): the file pipelines dedup, store and record it.

    ``outcome`` is set by the pipelines: ``uploaded`` (new or changed) or
    ``unchanged`` (same content as the channel's last version of that path).
    """

    job_id: str
    channel_id: str
    source_type: str
    path: str
    size: int
    sha256: str
    local_path: str
    outcome: str = ""
    error: str = ""


@dataclass
class JobResultItem:
    """The end of a fetch job: published on the parsers and status topics, recorded
    in ``job_runs``. Yielded last, after every file of the job went through."""

    job_id: str
    channel_id: str
    source_type: str
    status: str
    message: str
    files_processed: int
    files_uploaded: int
    execution_time_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    #: set by the job pipeline when the result could not be recorded or published
    error: str = ""
