"""The baseline: a plain Scrapy spider on Scrapy's default settings, POSTing every price ID.

Run it outside any Scrapy project (no ``scrapy.cfg`` above the working
directory, ``SCRAPY_SETTINGS_MODULE`` unset), so nothing but Scrapy's defaults
and the two overrides below apply::

    scrapy runspider benchmarks/plain_spider.py -a ids=20000 \\
        -a url_template='http://127.0.0.1:8765/price/{id}'

IDs are ``"1"`` .. ``str(ids)``, the same ones ``benchmarks.throughput`` pushes
to Hydra's queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response, TextResponse


class PlainPricesSpider(Spider):
    name = "plain_prices"
    # Only what a fair measurement needs, as documented for switching these off:
    # both start a listening server the crawl never uses (Scrapy 2.19's RemoteControl
    # HTTP server, "disabled by setting REMOTE_CONTROL_ENABLED to False", and the
    # telnet console). Scrapy's own test crawlers (scrapy.utils.test.get_crawler)
    # and Hydra's settings turn off the same two; nothing else is changed here.
    custom_settings = {
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
    }

    def __init__(self, ids: str = "1000", url_template: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "{id}" not in url_template:
            raise ValueError("pass -a url_template=http://host:port/price/{id}")
        self.count = int(ids)
        self.url_template = url_template

    async def start(self) -> AsyncIterator[Request]:
        for number in range(1, self.count + 1):
            url = self.url_template.replace("{id}", str(number))
            yield Request(url, method="POST", callback=self.parse_price, dont_filter=True)

    def parse_price(self, response: Response) -> Iterator[dict[str, Any]]:
        if not isinstance(response, TextResponse):
            raise TypeError(f"expected a JSON response, got {response!r}")
        data: dict[str, Any] = response.json()
        yield data
