"""A spider whose callback raises: the Sentry test's real ``scrapy crawl``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response


class BrokenSpider(Spider):
    """``-a url=...`` is fetched (meta ``channel_id``); its callback raises with ``-a secret``
    in the message."""

    name = "sentry_broken"

    def __init__(self, url: str = "", secret: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.secret = secret

    async def start(self) -> AsyncIterator[Any]:
        yield Request(self.url, meta={"channel_id": "ch-broken"}, dont_filter=True)

    def parse(self, response: Response, **kwargs: Any) -> Any:
        raise RuntimeError(f"cannot parse {response.url}: {self.secret}")
