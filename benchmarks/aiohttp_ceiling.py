"""The ceiling: a raw aiohttp client loop POSTing the same IDs, no framework at all.

    python -m benchmarks.aiohttp_ceiling --ids 10000 --url-template 'http://h/price/{id}' \\
        --timing /tmp/timing.json

It parses each JSON body, as the spiders do, and writes the same timing document as
:class:`benchmarks.timing.ResponseTiming` (first and last response, count). It shows
the scale of what one core can do against the target; it is not a baseline for the
ratios, since it keeps none of a crawler's promises.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp


async def crawl(url_template: str, count: int, concurrency: int) -> dict[str, object]:
    next_id = iter(range(1, count + 1))
    responses = 0
    first: float | None = None
    last: float | None = None

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal responses, first, last
        for number in next_id:
            async with session.post(url_template.replace("{id}", str(number))) as response:
                await response.json()
            now = time.monotonic()
            first = now if first is None else first
            last = now
            responses += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"responses": responses, "items": responses, "first": first, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, required=True)
    parser.add_argument("--url-template", required=True)
    parser.add_argument("--timing", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    document = asyncio.run(crawl(args.url_template, args.ids, args.concurrency))
    args.timing.write_text(json.dumps({**document, "reason": "finished"}), encoding="utf-8")


if __name__ == "__main__":
    main()
