"""What lands in the dead-letter: enough to understand and replay a message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from crawlers.models.redaction import redact_payload

DeadLetterReason = Literal["invalid_message", "max_attempts", "poison", "item_error"]


class DeadLetterEntry(BaseModel):
    reason: DeadLetterReason = Field(description="Why the message was set aside.")
    error: str = Field(description="The validation error or failure, human-readable.")
    source: str = Field(description="Queue key (or spider argument) the payload came from.")
    payload: str = Field(
        description="The raw message as received; secret-looking fields of a JSON object "
        "are masked (see `crawlers/models/redaction.py`)."
    )
    worker: str = Field("", description="Worker that set it aside.")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(
        cls, *, reason: DeadLetterReason, error: str, source: str, payload: str, **extra: Any
    ) -> DeadLetterEntry:
        return cls(
            reason=reason, error=error, source=source, payload=redact_payload(payload), **extra
        )
