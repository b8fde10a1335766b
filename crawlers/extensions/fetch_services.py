"""What fetch spiders and their pipelines share: the state database, the file store,
the topics. Opened once per crawler when the spider opens (migrations applied),
closed when it closes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy import Spider, signals

from crawlers.db.state import StateDB
from crawlers.stores import Store, build_store
from crawlers.topics import Topics, build_topics

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class FetchServices:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.db = StateDB.from_crawler(crawler)
        self.store: Store = build_store(crawler)
        self.topics: Topics = build_topics(crawler)
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FetchServices:
        return cls(crawler)

    @classmethod
    def of(cls, crawler: Crawler) -> FetchServices:
        services = crawler.get_extension(cls)
        if services is None:
            raise RuntimeError(f"{cls.__name__} is not enabled: add it to EXTENSIONS")
        return services

    async def spider_opened(self, spider: Spider) -> None:
        await self.db.open()
        await self.store.open()
        await self.topics.open()
        logger.info("Fetch jobs store files in %s", self.store.describe())

    async def spider_closed(self, spider: Spider) -> None:
        await self.topics.close()
        await self.store.close()
        await self.db.close()
