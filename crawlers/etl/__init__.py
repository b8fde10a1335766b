"""The ETL's DataProcessor library: raw records from the crawlers' streams in, clean,
deduplicated, enriched rows out (``scrapy etl`` runs it between streams and sinks).

Importing this package is light: sentence-transformers and torch are imported
only when a batch first needs embeddings.
"""

from __future__ import annotations

from crawlers.etl.errors import EtlError, RecordError, RecordErrorReason
from crawlers.etl.extractors import EXTRACTORS_BASE, Extractor, build_extractors
from crawlers.etl.processor import DataProcessor, Outcome, ProcessedRow, RecordFailure
from crawlers.etl.settings import EtlSettings, EtlSettingsError

__all__ = [
    "EXTRACTORS_BASE",
    "DataProcessor",
    "EtlError",
    "EtlSettings",
    "EtlSettingsError",
    "Extractor",
    "Outcome",
    "ProcessedRow",
    "RecordError",
    "RecordErrorReason",
    "RecordFailure",
    "build_extractors",
]
