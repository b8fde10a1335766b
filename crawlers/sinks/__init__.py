"""Where items end up, chosen by URI scheme like Scrapy's ``FilesPipeline.STORE_SCHEMES``.

``HYDRA_SINKS`` lists URIs; later issues add ``bigquery://`` and ``clickhouse://``
(buffered inserts, flushed before any message they belong to is acked).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from scrapy.utils.misc import load_object

from crawlers.sinks.base import Sink

SINK_SCHEMES = {
    "jsonl": "crawlers.sinks.jsonl.JsonLinesSink",
}


def sink_from_uri(uri: str) -> Sink:
    """The sink for ``uri``; it connects or opens files in ``open()``, not here."""
    scheme = urlsplit(uri).scheme
    if scheme not in SINK_SCHEMES:
        known = ", ".join(f"{name}://" for name in sorted(SINK_SCHEMES))
        raise ValueError(f"HYDRA_SINKS: no sink for {uri!r} (known: {known})")
    sink: Sink = load_object(SINK_SCHEMES[scheme]).from_uri(uri)
    return sink


__all__ = ["SINK_SCHEMES", "Sink", "sink_from_uri"]
