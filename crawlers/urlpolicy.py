"""Which URLs a request built from a queue message may reach.

Queue messages are untrusted input. Without a policy, a ``url_template`` of
``file:///srv/{id}`` would make a worker read local files, and Scrapy's
download handlers equally reach ``s3://``, ``ftp://`` and ``data:``. Task kinds
check their URLs when a message is admitted (so a bad one is dead-lettered as
``forbidden_url`` before anything is fetched), and ``TaskRequestsMiddleware``
checks every request of a task run again before it is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from crawlers.config import HydraConfig


@dataclass(frozen=True)
class UrlPolicy:
    schemes: frozenset[str]
    #: fnmatch patterns of allowed hosts; empty = any host
    hosts: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: HydraConfig) -> UrlPolicy:
        hosts = tuple(pattern.lower() for pattern in config.allowed_hosts)
        return cls(frozenset(config.allowed_schemes), hosts)

    def violation(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or ``None`` if it may."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as exc:
            return f"unparsable URL ({exc})"
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            return (
                f"scheme {scheme or '(none)'!r} is not allowed (HYDRA_ALLOWED_SCHEMES: {allowed})"
            )
        if not host:
            return "URL has no host"
        if self.hosts and not any(fnmatchcase(host, pattern) for pattern in self.hosts):
            return f"host {host!r} is not allowed (HYDRA_ALLOWED_HOSTS)"
        return None
