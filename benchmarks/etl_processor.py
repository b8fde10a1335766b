"""Records/s through the DataProcessor, without and with embeddings, each against a
plain baseline doing the same essential work in the same run.

``python -m benchmarks.etl_processor [--records 4000] [--batch 256] [--rounds 3]``

* Without embeddings: web/API channel items (title, price string, URL, HTML in the
  description) through ``DataProcessor.process`` (parse the RawRecord, extract,
  clean, normalise the price and currency, dedup in memory, content hash). The
  baseline is the least a processor could do and still store something useful:
  ``json.loads`` of the record, ``unicodedata.normalize`` of each text field and a
  sha256 of the item (no HTML stripping, no price parsing, no dedup, no validation).
* With embeddings: the same items, embeddings on. The baseline is the model alone:
  ``SentenceTransformer.encode`` of the same texts in the same batch size, so the
  ratio says what the rest of the pipeline costs around the model.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import statistics
import time
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

from w3lib.html import remove_tags

from crawlers.etl.enrich import SentenceEmbedder
from crawlers.etl.processor import DataProcessor
from crawlers.etl.settings import EtlSettings
from crawlers.models.raw_record import RawRecord

WORDS = ["red", "blue", "steel", "wool", "linen", "lamp", "chair", "table", "kettle", "phone",
         "case", "charger", "cable", "desk"]  # fmt: skip
PRICE = re.compile(r"(\d[\d.,]*)")


def records(count: int) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    out = []
    for n in range(count):
        words = [WORDS[(n * 7 + k) % len(WORDS)] for k in range(4)]
        item = {
            "url": f"https://shop.example/p/{n}",
            "sku": f"SKU-{n:06d}",
            "title": f"  {' '.join(words).title()}  No.{n} ",
            "price": f"${n % 900 + 1},{n % 10}99.50" if n % 3 else f"{n % 50 + 1},99 €",
            "description": f"<p>A <b>{words[0]}</b> {words[1]} for every {words[2]}.</p>",
        }
        record = RawRecord(
            key=f"web/{n}", task_type="web", source="web", task="bench", fetched_at=now,
            item=item,
        )  # fmt: skip
        out.append((f"s|{n}-0", record.model_dump_json()))
    return out


def baseline_plain(batch: list[tuple[str, str]]) -> int:
    """The essential steps written plainly: parse, NFKC and whitespace, HTML stripped,
    a price's number (either decimal mark), a hash, an in-memory seen-set."""
    stored, seen = 0, set()
    for _entry, raw in batch:
        record = json.loads(raw)
        item = {
            k: " ".join(unicodedata.normalize("NFKC", remove_tags(v)).split())
            if isinstance(v, str) else v
            for k, v in record["item"].items()
        }  # fmt: skip
        found = PRICE.search(item["price"])
        if found:
            number = found.group(1)
            if "," in number and number.rfind(",") > number.rfind("."):
                number = number.replace(".", "").replace(",", ".")
            item["price"] = str(Decimal(number.replace(",", "")))
        digest = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest()
        if digest not in seen:
            seen.add(digest)
            stored += 1
    return stored


async def run_processor(
    data: list[tuple[str, str]], batch: int, embeddings: bool, embedder: SentenceEmbedder | None
) -> float:
    settings = EtlSettings(embeddings=embeddings, dedup_window_seconds=0)
    processor = DataProcessor(settings, None, embedder=embedder)
    await processor.open()
    started = time.perf_counter()
    rows = 0
    embedded = 0
    for start in range(0, len(data), batch):
        outcome = await processor.process(data[start : start + batch])
        rows += len(outcome.rows)
        embedded += outcome.counters["embedded"]
    seconds = time.perf_counter() - started
    await processor.close()
    assert rows == len(data), f"{rows} of {len(data)} records came out"
    assert embedded == (len(data) if embeddings else 0), f"{embedded} embedded"
    return len(data) / seconds


def run_model_alone(data: list[tuple[str, str]], batch: int, embedder: SentenceEmbedder) -> float:
    texts = []
    for _entry, raw in data:
        item = json.loads(raw)["item"]
        texts.append(f"{item['title'].strip()} {remove_tags(item['description'])}")
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder._encode(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--embedded-records", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = records(args.records)
    embedded = records(args.embedded_records)
    embedder = SentenceEmbedder(batch_size=64)
    embedder._encode(["warm up: load the model once, outside the timings"])
    plain, hydra, model, hydra_emb = [], [], [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for start in range(0, len(data), args.batch):
            baseline_plain(data[start : start + args.batch])
        plain.append(len(data) / (time.perf_counter() - started))
        hydra.append(asyncio.run(run_processor(data, args.batch, False, None)))
        model.append(run_model_alone(embedded, args.batch, embedder))
        hydra_emb.append(asyncio.run(run_processor(embedded, args.batch, True, embedder)))
    p, h = statistics.median(plain), statistics.median(hydra)
    m, e = statistics.median(model), statistics.median(hydra_emb)
    print(f"Web items, batches of {args.batch}, {args.rounds} rounds (medians):")
    print(f"  without embeddings: DataProcessor {h:,.0f} records/s; plain baseline {p:,.0f}/s;"
          f" ratio {h / p:.2f}")  # fmt: skip
    print(f"  with embeddings:    DataProcessor {e:,.0f} records/s; model alone {m:,.0f}/s;"
          f" ratio {e / m:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
