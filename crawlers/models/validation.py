"""Readable validation errors that never echo the input (it may hold secrets)."""

from __future__ import annotations

from pydantic import ValidationError


def validation_error_text(exc: ValidationError) -> str:
    """``"ids: List should have at least 1 item; attempt: ..."`` without input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        location = ".".join(str(part) for part in error["loc"]) or "message"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)
