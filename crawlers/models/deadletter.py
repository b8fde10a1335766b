"""What lands in the dead-letter: enough to understand and replay a message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from crawlers.models.redaction import DEFAULT_REDACTOR, Redactor

DeadLetterReason = Literal[
    "invalid_message",
    "forbidden_url",
    "max_attempts",
    "poison",
    "item_error",
    "sink_rejected",
    "task_failed",
]


class DeadLetterEntry(BaseModel):
    id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description="Unique id of the entry (dead letters are moved idempotently by it).",
    )
    reason: DeadLetterReason = Field(description="Why the message was set aside.")
    error: str = Field(description="The validation error or failure, human-readable.")
    source: str = Field(description="Queue key the payload came from (replay goes back there).")
    kind: str = Field("", description="Task kind of the message, e.g. `price_batch`.")
    message_id: str = Field("", description="Identity the queue gave the message.")
    payload: str = Field(
        description="The raw message as received (for `item_error`/`sink_rejected`: the "
        "row); credentials masked by the redaction helper."
    )
    payload_redacted: bool = Field(
        False, description="Credentials were masked, so a replay would not be faithful."
    )
    payload_truncated: bool = Field(
        False, description="The payload was larger than `HYDRA_MAX_MESSAGE_BYTES` and is cut."
    )
    worker: str = Field("", description="Worker that set it aside.")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        reason: DeadLetterReason,
        error: str,
        source: str,
        payload: str,
        max_bytes: int = 1 << 20,
        redactor: Redactor = DEFAULT_REDACTOR,
        **extra: Any,
    ) -> DeadLetterEntry:
        # Redact the whole payload before cutting it: a cut can split a JSON
        # document or a secret so the redactor no longer recognises it.
        masked, redacted = redactor.payload(payload)
        encoded = masked.encode("utf-8", "surrogatepass")
        truncated = len(encoded) > max_bytes
        if truncated:  # cut at a byte count, not characters: 4-byte characters count 4
            masked = encoded[:max_bytes].decode("utf-8", "ignore")
        return cls(
            reason=reason,
            error=redactor.text(error),
            source=source,
            payload=masked,
            payload_redacted=redacted,
            payload_truncated=truncated,
            **extra,
        )
