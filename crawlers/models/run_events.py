"""Seed 000's event stream (``hydra:events``): what workers tell the controller.

A worker publishes after the rows are durable and before it acknowledges the
batch, so an event may arrive twice (a crash between the two) but is never
missing for something stored. Consumers therefore apply events idempotently:
per-ID state, not counters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RunEventType = Literal["stored", "done", "stopped", "failed"]


class RunEvent(BaseModel):
    """One fact about a price batch, as it happened in a region."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: RunEventType = Field(
        description="`stored`: `ids` are durable in every sink; `stopped`: the batch stopped "
        "at a non-OK status or download error, its `remainder` IDs went back to the region's "
        "queue; `failed`: `ids` are dead-lettered (permanently failed)."
    )
    run_id: str = Field(min_length=1, max_length=255)
    batch_id: str = Field(min_length=1, max_length=255)
    region: str = Field(min_length=1, max_length=64, description="Region of the worker.")
    ids: list[str] = Field(default_factory=list, description="IDs concerned (stored, failed).")
    remainder: int = Field(0, ge=0, description="IDs left unfetched by a stop.")
    reason: str | None = Field(None, max_length=2048, description="Why a batch stopped/failed.")
    attempt: int = Field(0, ge=0, description="The batch's attempt number.")
    worker: str = Field("", max_length=255, description="The worker's id (host:pid:nonce).")
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
