"""Where items end up, chosen by URI scheme like Scrapy's ``FEED_STORAGES``.

``HYDRA_SINKS`` lists URIs; the backends are ``HYDRA_SINK_SCHEMES_BASE`` merged with
``HYDRA_SINK_SCHEMES``, each built with ``build_from_crawler(cls, crawler, uri=...)``.
Later issues add ``bigquery://``, ``clickhouse://`` and ``stream://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy.utils.misc import build_from_crawler, load_object

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.sinks.base import Rejection, Row, Sink, SinkError

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def build_sink(crawler: Crawler, uri: str) -> Sink:
    """The sink for ``uri``; it connects or opens files in ``open()``, not here."""
    schemes = HydraConfig.from_crawler(crawler).registry("sink_schemes")
    scheme = urlsplit(uri).scheme
    if scheme not in schemes:
        known = ", ".join(f"{name}://" for name in sorted(schemes))
        raise HydraConfigError([f"HYDRA_SINKS: no sink for {uri!r} (known: {known})"])
    sink: Sink = build_from_crawler(load_object(schemes[scheme]), crawler, uri=uri)
    return sink


__all__ = ["Rejection", "Row", "Sink", "SinkError", "build_sink"]
