"""The one redaction helper: credentials are masked before anything leaves a worker.

Task configs carry credentials (seed 003: S3 keys, FTP passwords, login
credentials, API keys), URLs carry them in their userinfo (``https://u:pw@h``)
or query (``?token=...``). Models hold typed credentials as ``SecretStr``; this
module covers everything that only sees text or raw JSON: dead-letter entries,
log records, summaries, error messages. Pure Python (no Scrapy), so producers
can use it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    "credential",
)
#: query parameters masked by default, besides those matching a secret marker
DEFAULT_SECRET_PARAMS = ("key", "sig", "signature", "auth", "code", "session", "sid")
#: a URL inside free text: scheme://... up to whitespace or a quote/bracket
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s'\"<>`]+")
#: a quoted secret-looking key and its quoted value, as in a logged dict
#: (Scrapy's "Overridden settings: {'AWS_SECRET_ACCESS_KEY': '...'}")
_QUOTED_PAIR = re.compile(
    r"""(['"])([A-Za-z0-9_.-]{1,100})\1(\s*:\s*)(['"])((?:(?!\4)[^\\]|\\.){0,4096})\4"""
)
#: ``user:password@`` without a scheme, as in "invalid hostname: user:pw@host"
_USERINFO_IN_TEXT = re.compile(r"([^\s:/@'\"<>`]*):[^\s/@'\"<>`]+@")


def _masked_pair(match: re.Match[str]) -> str:
    quote, key, colon, value_quote, value = match.groups()
    if not value or value == MASK or not is_secret_key(key):
        return match.group(0)
    return f"{quote}{key}{quote}{colon}{value_quote}{MASK}{value_quote}"


def is_secret_key(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(marker in lowered for marker in _SECRET_MARKERS)


@dataclass(frozen=True)
class Redactor:
    """Masks secrets in URLs, text and JSON values; ``secret_params`` adds query names."""

    secret_params: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_SECRET_PARAMS))

    @classmethod
    def with_params(cls, names: Iterable[str]) -> Redactor:
        return cls(frozenset(DEFAULT_SECRET_PARAMS) | {name.lower() for name in names})

    def _secret_param(self, name: str) -> bool:
        return name.lower() in self.secret_params or is_secret_key(name)

    def url(self, url: str) -> str:
        """``https://u:pw@h/p?token=x&a=1`` -> ``https://u:***@h/p?token=***&a=1``."""
        try:
            parts = urlsplit(url)
            netloc = parts.netloc
            if "@" in netloc:
                userinfo, host = netloc.rsplit("@", 1)
                user, has_password, _ = userinfo.partition(":")
                netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
            query = parts.query
            if query:
                pairs = parse_qsl(query, keep_blank_values=True)
                if any(self._secret_param(name) for name, _ in pairs):
                    masked = [(n, MASK if self._secret_param(n) else v) for n, v in pairs]
                    query = urlencode(masked, safe="*")
            if netloc == parts.netloc and query == parts.query:
                return url
            return urlunsplit(parts._replace(netloc=netloc, query=query))
        except ValueError:  # not a parsable URL: mask it whole rather than leak it
            return MASK

    def text(self, text: str) -> str:
        """Every URL found in ``text`` redacted; the rest unchanged."""
        if "://" in text:
            text = _URL_IN_TEXT.sub(lambda match: self.url(match.group(0)), text)
        if "@" in text:
            text = _USERINFO_IN_TEXT.sub(lambda match: f"{match.group(1)}:{MASK}@", text)
        if "':" in text or '":' in text:
            text = _QUOTED_PAIR.sub(_masked_pair, text)
        return text

    def value(self, value: Any) -> Any:
        """A copy of a JSON value: secret-looking keys masked, URLs in strings redacted."""
        if isinstance(value, dict):
            return {
                key: (
                    MASK if is_secret_key(str(key)) and item not in (None, "") else self.value(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def payload(self, raw: str) -> tuple[str, bool]:
        """``(text, redacted)``: the raw payload itself when it holds no secret, else a
        masked copy (JSON re-serialised, or text with its URLs redacted)."""
        try:
            parsed = json.loads(raw)
            masked = self.value(parsed)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to walk
            masked_text = self.text(raw)
            return masked_text, masked_text != raw
        if masked == parsed:
            return raw, False
        return json.dumps(masked, ensure_ascii=False), True


#: the redactor with the default parameter list, for code that has no config at hand
DEFAULT_REDACTOR = Redactor()


def redact_url(url: str) -> str:
    return DEFAULT_REDACTOR.url(url)


def redact(value: Any) -> Any:
    return DEFAULT_REDACTOR.value(value)


def redact_payload(raw: str) -> str:
    return DEFAULT_REDACTOR.payload(raw)[0]
