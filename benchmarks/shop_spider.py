"""The baseline for generated fetchers: a hand-written Scrapy spider for the sandbox
shop's v2 API (bearer token from ``/api/session``, cursor pages), tuned as a Scrapy
user would (no cookies, CONCURRENT_ITEMS=2, telnet and RemoteControl off), its
items written to a JSON-lines feed::

    scrapy runspider benchmarks/shop_spider.py -a base=http://127.0.0.1:PORT \\
        -s FEEDS='{"items.jsonl": {"format": "jsonlines"}}'
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response, TextResponse


class ShopSpider(Spider):
    name = "shop_v2"
    custom_settings = {
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "COOKIES_ENABLED": False,
        "CONCURRENT_ITEMS": 2,
        "WARN_ON_GENERATOR_RETURN_VALUE": False,
    }

    def __init__(self, base: str = "", limit: str = "20", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base.rstrip("/")
        self.limit = int(limit)

    async def start(self) -> AsyncIterator[Request]:
        yield Request(f"{self.base}/api/session", callback=self.got_token)

    def got_token(self, response: Response) -> Iterator[Request]:
        assert isinstance(response, TextResponse)
        token = json.loads(response.text)["token"]
        yield self._page(token, None)

    def _page(self, token: str, cursor: str | None) -> Request:
        query = f"cursor={cursor}&" if cursor else ""
        return Request(
            f"{self.base}/api/v2/catalog/items?{query}limit={self.limit}",
            headers={"Authorization": f"Bearer {token}"},
            callback=self.parse_page,
            cb_kwargs={"token": token},
        )

    def parse_page(self, response: Response, token: str) -> Iterator[Any]:
        assert isinstance(response, TextResponse)
        body = json.loads(response.text)
        for item in body["data"]["items"]:
            yield {"code": item["code"], "title": item["title"], "amount": item["amount"]}
        if body.get("next_cursor"):
            yield self._page(token, body["next_cursor"])
