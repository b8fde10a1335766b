"""Masking of credentials before anything leaves a worker.

Task configs carry credentials (seed 003: S3 keys, FTP passwords, login
credentials, API keys). Models hold them as ``SecretStr``; this module covers
the places that only see raw JSON: dead-letter entries and log lines.
"""

from __future__ import annotations

import json
from typing import Any

MASK = "***"
_SECRET_MARKERS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "authorization",
    "cookie",
    "private_key",
)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redact(value: Any) -> Any:
    """A copy of a JSON value with every secret-looking key's value masked."""
    if isinstance(value, dict):
        return {
            key: (MASK if is_secret_key(str(key)) and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def redact_payload(raw: str) -> str:
    """The raw payload itself when it holds no secret, else its masked JSON."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    masked = redact(parsed)
    if masked == parsed:
        return raw
    return json.dumps(masked, ensure_ascii=False)
