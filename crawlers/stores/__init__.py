"""Where fetched files are stored, chosen by the scheme of ``HYDRA_STORE_URI``.

The registry is ``HYDRA_STORE_SCHEMES_BASE`` merged with ``HYDRA_STORE_SCHEMES``; a
backend is built with ``build_from_crawler(cls, crawler, uri=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy.utils.misc import build_from_crawler, load_object

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.stores.base import Store

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def build_store(crawler: Crawler) -> Store:
    config = HydraConfig.from_crawler(crawler)
    schemes = config.registry("store_schemes")
    scheme = urlsplit(config.store_uri).scheme
    if scheme not in schemes:
        known = ", ".join(f"{name}://" for name in sorted(schemes))
        raise HydraConfigError([f"HYDRA_STORE_URI: no store for {scheme!r} (known: {known})"])
    store: Store = build_from_crawler(load_object(schemes[scheme]), crawler, uri=config.store_uri)
    return store


__all__ = ["Store", "build_store"]
