"""Hydra's settings, parsed once per crawler into one typed object.

Every ``HYDRA_*`` setting is a field here, with its default and meaning; the
settings reference in ``docs/settings.md`` is generated from this model. A
value may come from the Scrapy settings (``-s``, ``custom_settings``, Scrapyd's
``setting=``), or from an environment variable of the same name, in that order.
Strings such as ``"200,204"`` or ``"[200, 204]"`` are accepted for lists, since
``-s`` and environment variables can only carry strings.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit
from weakref import WeakKeyDictionary

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

PREFIX = "HYDRA_"


class HydraConfig(BaseModel):
    """All ``HYDRA_*`` settings. Field ``foo_bar`` is setting ``HYDRA_FOO_BAR``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = Field(
        "",
        description="Redis server for the shared task queue and dead-letter, e.g. "
        "`redis://host:6379/0`. Empty: embedded mode (in-process queue, local files).",
    )
    prices_queue_key: str = Field(
        "hydra:prices:batches",
        description="Redis list the `prices` spider consumes price-batch messages from.",
    )
    deadletter_key: str = Field(
        "hydra:deadletter", description="Redis list that receives dead-letter entries."
    )
    deadletter_path: str = Field(
        "output/deadletter.jsonl",
        description="JSON-lines file that receives dead-letter entries in embedded mode.",
    )
    queue_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a claimed message stays leased without renewal; a dead "
        "worker's messages return to the queue after this.",
    )
    queue_prefetch: int = Field(
        16,
        ge=1,
        description="Messages (batches) one worker holds at once; each runs its requests "
        "sequentially, so this is also the worker's request concurrency.",
    )
    queue_max_deliveries: int = Field(
        5,
        ge=1,
        description="A message reclaimed from dead workers this many times is dead-lettered "
        "as poison instead of being delivered again.",
    )
    queue_poll_max_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest wait between polls of an empty queue (polling backs off "
        "from 50 ms up to this).",
    )
    idle_close_seconds: float = Field(
        0.0,
        ge=0,
        description="Close the spider after the shared queue has been empty and no batch "
        "in flight for this long; 0 = run forever. Embedded mode closes once drained.",
    )
    ack_interval_seconds: float = Field(
        0.5,
        gt=0,
        description="How often finished messages are flushed through the sinks and "
        "acknowledged; the largest extra delay an ack sees.",
    )
    price_url_template: str = Field(
        "http://127.0.0.1:8765/price/{id}",
        description="URL for one price ID, `{id}` replaced; used when a batch message "
        "has no `url_template`.",
    )
    price_batch_size: int = Field(
        20, ge=1, description="IDs per batch when `-a ids=...` is split into batch messages."
    )
    batch_ok_statuses: list[int] = Field(
        default_factory=lambda: [200],
        description="Response statuses that count as success; any other status stops "
        "the batch and requeues its remainder.",
    )
    batch_max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts a batch (and its requeued remainders) gets before the "
        "remainder goes to the dead-letter.",
    )
    sinks: list[str] = Field(
        default_factory=lambda: ["jsonl://output/prices.jsonl"],
        description="Comma-separated sink URIs every item is written to "
        "(`jsonl:///abs/path.jsonl` or `jsonl://relative/path.jsonl`). Empty disables.",
    )
    summary_path: str = Field(
        "",
        description="If set, a task spider writes its stats and summary as JSON to this file "
        "when it closes (for scripts, CI, Scrapyd jobs).",
    )
    region: str = Field(
        "default",
        description="Region this worker runs as; stamped on every item.",
    )

    _by_crawler: ClassVar[WeakKeyDictionary[Crawler, HydraConfig]] = WeakKeyDictionary()

    @field_validator("batch_ok_statuses", "sinks", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def redis_url_redacted(self) -> str:
        """The Redis URL with any password masked, for logs."""
        return redact_url(self.redis_url)

    @classmethod
    def setting_names(cls) -> dict[str, str]:
        """Field name -> setting name."""
        return {name: PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> HydraConfig:
        names = cls.setting_names()
        raw: dict[str, Any] = {}
        for field, name in names.items():
            value = settings.get(name)
            if value is None:
                value = os.environ.get(name)
            if value is not None:
                raw[field] = value
        unknown = sorted(
            key
            for key in settings.attributes
            if key.startswith(PREFIX) and key not in names.values()
        )
        if unknown:
            raise ValueError(f"Unknown Hydra settings: {', '.join(unknown)}")
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            details = "; ".join(
                f"{PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise ValueError(f"Invalid Hydra settings: {details}") from None
        return config

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> HydraConfig:
        """Parse once per crawler; every component of that crawler shares the result."""
        cached = cls._by_crawler.get(crawler)
        if cached is None:
            cached = cls._by_crawler[crawler] = cls.from_settings(crawler.settings)
        return cached


def redact_url(url: str) -> str:
    """Mask the password of a URL (``redis://:secret@host`` -> ``redis://:***@host``)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
