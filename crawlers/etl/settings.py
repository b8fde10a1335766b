"""The DataProcessor's settings: one frozen dataclass with working defaults.

The ETL library is used by ``scrapy etl`` and by tests, benchmarks and other
services without a crawler, so it does not read :class:`~crawlers.config.HydraConfig`
itself: the service maps its ``HYDRA_ETL_*`` settings onto this object (one
field per setting, same meaning). The defaults run embedded (files only, no
Redis) with embeddings on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: the dictionaries shipped with the code (seeded into Redis at start-up)
PACKAGED_DICTIONARIES = Path(__file__).resolve().parent / "dictionaries"


class EtlSettingsError(ValueError):
    """A setting out of range; the message names the setting."""


@dataclass(frozen=True, slots=True)
class EtlSettings:
    #: prefix of the ETL's Redis keys (dictionaries); keys carry it as a hash tag so
    #: they live on one cluster slot
    key_prefix: str = "hydra:etl"
    #: folder of the dictionary files (``<name>.json``) seeded into Redis
    dictionaries_dir: Path = PACKAGED_DICTIONARIES
    #: how often a processor asks Redis whether the dictionaries changed (one GET);
    #: 0 asks before every batch
    dictionary_check_seconds: float = 5.0
    #: a record whose content was processed less than this long ago is dropped as a
    #: duplicate; 0 keeps only the per-process memory (no Redis keys)
    dedup_window_seconds: float = 7 * 24 * 3600.0
    #: prefix of the dedup keys (each followed by a 16-byte digest). Up to 12 bytes
    #: cost nothing extra: Redis allocates the key in the same 32-byte class
    dedup_key_prefix: str = "hydra:etl:k:"
    #: content keys the processor remembers itself (the oldest are forgotten first)
    dedup_local_max_keys: int = 100_000
    #: extractors added to (or, with ``None``, removed from) ``EXTRACTORS_BASE``
    extractors: Mapping[str, str | None] = field(default_factory=dict)
    #: compute text embeddings for the task types whose extractor asks for them
    embeddings: bool = True
    #: a sentence-transformers model directory; empty: the packaged all-MiniLM-L6-v2
    embedding_model: str = ""
    #: texts per forward pass of the model
    embedding_batch_size: int = 64
    #: ISO 4217 code of prices that name no currency; empty leaves them without one
    default_currency: str = ""
    #: ``03/05/2024`` is 3 May (True) or March 5 (False, the US reading)
    dayfirst: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not self.key_prefix:
            problems.append("key_prefix: must not be empty")
        if self.dictionary_check_seconds < 0:
            problems.append("dictionary_check_seconds: must be >= 0")
        if self.dedup_window_seconds < 0:
            problems.append("dedup_window_seconds: must be >= 0")
        if 0 < self.dedup_window_seconds < 0.001:
            problems.append("dedup_window_seconds: must be 0 or at least 0.001 (Redis PX)")
        if not self.dedup_key_prefix:
            problems.append("dedup_key_prefix: must not be empty")
        if self.dedup_local_max_keys < 1:
            problems.append("dedup_local_max_keys: must be >= 1")
        if not 1 <= self.embedding_batch_size <= 4096:
            problems.append("embedding_batch_size: must be within [1, 4096]")
        if self.default_currency and not (
            len(self.default_currency) == 3
            and self.default_currency.isalpha()
            and self.default_currency.isupper()
        ):
            problems.append("default_currency: must be an ISO 4217 code such as USD")
        if problems:
            raise EtlSettingsError("; ".join(problems))

    @classmethod
    def from_config(cls, config: Any) -> EtlSettings:
        """From a :class:`~crawlers.config.HydraConfig`: each field ``<name>`` from its
        ``etl_<name>`` attribute (setting ``HYDRA_ETL_<NAME>``) where the config has one;
        the others keep their defaults. An empty ``etl_dictionaries_dir`` is the
        packaged folder."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            value = getattr(config, f"etl_{spec.name}", None)
            if value is None:
                continue
            if spec.name == "dictionaries_dir":
                if not str(value):
                    continue
                value = Path(value)
            values[spec.name] = value
        return cls(**values)

    def key(self, name: str) -> str:
        """A Redis key of the ETL: ``{hydra:etl}:<name>``."""
        return f"{{{self.key_prefix}}}:{name}"
