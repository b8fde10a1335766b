"""Seed 003's output topics: what a fetch job tells the parsers and the status watchers.

Field names are exactly the seed's. Consumers may see a message twice (at-least-
once delivery, a job redelivered after a worker crash): ``idempotency_key`` is the
same for the same job and topic, so they can recognise it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["success", "failed", "requires_human_review"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ParsersMessage(BaseModel):
    """One per successful job: where its new and changed files are."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    channel_id: str
    s3_output_path: str = Field(description="URI of the job's folder in the store.")
    file_count: int = Field(ge=0, description="Files stored by this job (new or changed).")
    timestamp: str = Field(default_factory=now_iso)
    idempotency_key: str = Field(description="`{job_id}:parsers`: the same for a redelivery.")


class StatusMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    files_processed: int = Field(ge=0, description="Files fetched and checked by this job.")
    execution_time_seconds: float = Field(ge=0)


class StatusMessage(BaseModel):
    """One per job, whatever its end."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    channel_id: str
    status: JobStatus
    message: str
    timestamp: str = Field(default_factory=now_iso)
    metadata: StatusMetadata
    idempotency_key: str = Field(description="`{job_id}:status`: the same for a redelivery.")
