"""The DataProcessor: raw records in, rows ready for a sink out.

One call processes one batch of stream entries, ``(entry_id, raw JSON of a
RawRecord)``: parse, pick the task type's extractor, extract and clean, claim the
content key (dedup), enrich, embed. The outcome sorts every entry into exactly
one of rows, duplicates or failures, so the caller can acknowledge them all once
the rows are durable. A record that cannot be processed is a failure with its
reason; it never fails the batch. Only what is not about one record (Redis
unreachable for dedup, the embedding model unusable) raises: the caller then
leaves the whole batch unacknowledged and tries again.

The constructor does no I/O; :meth:`DataProcessor.open` reads the dictionaries
(and seeds Redis with them). Cleaning runs in a worker thread, like the model:
a batch of thousands of records must not hold the event loop for long.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple

import redis.asyncio
from pydantic import ValidationError

from crawlers.etl.cleaning import Cleaner
from crawlers.etl.dedup import ContentKeys, content_digest
from crawlers.etl.dictionaries import DictionaryStore
from crawlers.etl.enrich import Embedder, SentenceEmbedder, content_hash, metadata
from crawlers.etl.errors import MAX_ERROR_CHARS, EtlError, RecordError, RecordErrorReason
from crawlers.etl.extractors import Extractor, build_extractors, extractor_for
from crawlers.etl.settings import EtlSettings
from crawlers.models.raw_record import RawRecord
from crawlers.models.validation import validation_error_text


@dataclass(frozen=True, slots=True)
class ProcessedRow:
    entry_id: str
    #: the record's stable identity (the sink's dedup key)
    key: str
    data: dict[str, Any]
    #: the content key this row claimed (for :meth:`DataProcessor.release`)
    content_key: bytes = field(repr=False, default=b"")


class RecordFailure(NamedTuple):
    entry_id: str
    raw: str
    reason: RecordErrorReason
    error: str


@dataclass
class Outcome:
    rows: list[ProcessedRow] = field(default_factory=list)
    #: entry ids dropped: their content was processed already (within the window)
    duplicates: list[str] = field(default_factory=list)
    failures: list[RecordFailure] = field(default_factory=list)
    #: received, rows, duplicates, failures, failures/<reason>, embedded,
    #: unparsed_fields, dictionary_reloads
    counters: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


@dataclass(slots=True)
class _Prepared:
    entry_id: str
    record: RawRecord
    extractor: Extractor
    fields: dict[str, Any]
    unparsed: dict[str, str]
    digest: bytes


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DataProcessor:
    def __init__(
        self,
        settings: EtlSettings | None = None,
        client: redis.asyncio.Redis | None = None,
        *,
        embedder: Embedder | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings = settings or EtlSettings()
        #: task type -> extractor (class paths are imported here: a typo fails early)
        self.extractors = build_extractors(settings.extractors)
        self.dictionaries = DictionaryStore(settings, client)
        self.dedup = ContentKeys(
            window_seconds=settings.dedup_window_seconds,
            local_max_keys=settings.dedup_local_max_keys,
            prefix=settings.dedup_key_prefix,
            client=client,
        )
        if embedder is None and settings.embeddings:
            embedder = SentenceEmbedder(
                settings.embedding_model or None, batch_size=settings.embedding_batch_size
            )
        self.embedder = embedder if settings.embeddings else None
        self.now = now
        #: a client this processor made (from_config), closed with it
        self._own_client: redis.asyncio.Redis | None = None
        #: every batch's counters added up
        self.totals: Counter[str] = Counter()
        self._cleaner: Cleaner | None = None

    @classmethod
    def from_config(cls, config: Any) -> DataProcessor:
        """From a :class:`~crawlers.config.HydraConfig`: its ``etl_*`` settings and, with
        ``HYDRA_REDIS_URL``, a Redis client of its own (closed by :meth:`close`; no
        connection until :meth:`open`)."""
        url = str(getattr(config, "redis_url", "") or "")
        client = redis.asyncio.Redis.from_url(url) if url else None
        processor = cls(EtlSettings.from_config(config), client)
        processor._own_client = client
        return processor

    async def open(self) -> None:
        await self.dictionaries.open()
        self._cleaner = self._new_cleaner()
        if self.embedder is not None and self._wants_embeddings():
            self.embedder.check()

    @property
    def dictionary_version(self) -> int:
        """The version of the dictionaries the next batch is cleaned with."""
        return self.dictionaries.current.version

    async def close(self) -> None:
        """Nothing to flush. A client passed in is the caller's to close; the model
        stays loaded for the process."""
        self._cleaner = None
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None

    async def __aenter__(self) -> DataProcessor:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def process(self, records: Sequence[tuple[str, str]]) -> Outcome:
        """Process ``(entry_id, raw RawRecord JSON)`` pairs: each entry comes back in
        exactly one of ``rows`` (in input order), ``duplicates`` or ``failures``.
        Raises only for what is not about one record (Redis, the model)."""
        started = time.perf_counter()
        if self._cleaner is None:
            raise EtlError("the DataProcessor is not open")
        outcome = Outcome()
        if await self.dictionaries.refresh():
            self._cleaner = self._new_cleaner()
            outcome.counters["dictionary_reloads"] += 1
        cleaner = self._cleaner
        prepared, outcome.failures = await asyncio.to_thread(self._prepare_all, records, cleaner)
        claims = await self.dedup.claim([(p.digest, p.entry_id) for p in prepared])
        fresh = [p for p, first in zip(prepared, claims, strict=True) if first]
        outcome.duplicates = [
            p.entry_id for p, first in zip(prepared, claims, strict=True) if not first
        ]
        vectors = await self._embed(fresh)
        processed_at = self.now()
        version = cleaner.dictionaries.version
        for item, vector in zip(fresh, vectors, strict=True):
            data = self._data(item, processed_at, version, vector)
            outcome.rows.append(ProcessedRow(item.entry_id, item.record.key, data, item.digest))
        counters = outcome.counters
        counters["received"] += len(records)
        counters["rows"] += len(outcome.rows)
        counters["duplicates"] += len(outcome.duplicates)
        counters["failures"] += len(outcome.failures)
        counters.update(f"failures/{failure.reason}" for failure in outcome.failures)
        counters["embedded"] += sum(vector is not None for vector in vectors)
        counters["unparsed_fields"] += sum(len(p.unparsed) for p in fresh)
        self.totals.update(counters)
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def release(self, rows: Iterable[ProcessedRow]) -> None:
        """Forget the content keys of rows that were not stored (a sink rejected them
        for good), so their content is not taken for a duplicate when it comes again."""
        await self.dedup.release([row.content_key for row in rows if row.content_key])

    # -- steps ----------------------------------------------------------------

    def _prepare_all(
        self, records: Sequence[tuple[str, str]], cleaner: Cleaner
    ) -> tuple[list[_Prepared], list[RecordFailure]]:
        prepared: list[_Prepared] = []
        failures: list[RecordFailure] = []
        for entry_id, raw in records:
            try:
                prepared.append(self._prepare(entry_id, raw, cleaner))
            except RecordError as exc:
                failures.append(RecordFailure(entry_id, raw, exc.reason, exc.detail))
            except Exception as exc:  # an extractor's bug: this record only
                error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                failures.append(RecordFailure(entry_id, raw, "extractor_error", error))
        return prepared, failures

    def _prepare(self, entry_id: str, raw: str, cleaner: Cleaner) -> _Prepared:
        record = parse_record(raw)
        extractor = extractor_for(self.extractors, record.task_type).resolve(record.item)
        cleaned = cleaner.clean(extractor.fields, extractor.extract(record.item))
        fields = cleaned.fields
        extractor.check(fields)
        extra = extractor.extra(record.item, cleaner)
        if extra:
            fields["extra"] = extra
        names = extractor.content_key or tuple(sorted(fields))
        specs = {spec.name: spec for spec in extractor.fields}
        values = [
            cleaner.key_value(specs[name], fields.get(name)) if name in specs else fields.get(name)
            for name in names
        ]
        digest = content_digest([record.task_type, extractor.record_type, values])
        return _Prepared(entry_id, record, extractor, fields, cleaned.unparsed, digest)

    async def _embed(self, fresh: list[_Prepared]) -> list[list[float] | None]:
        """One vector per row whose extractor wants one (and has text), in one call."""
        vectors: list[list[float] | None] = [None] * len(fresh)
        if self.embedder is None:
            return vectors
        texts = [item.extractor.embedding_text(item.fields) for item in fresh]
        wanted = [index for index, text in enumerate(texts) if text]
        if wanted:
            computed = await self.embedder.embed([texts[index] for index in wanted])
            for index, vector in zip(wanted, computed, strict=True):
                vectors[index] = vector
        return vectors

    def _data(
        self,
        item: _Prepared,
        processed_at: datetime,
        version: int,
        vector: list[float] | None,
    ) -> dict[str, Any]:
        data = metadata(item.record, processed_at)
        data.update(
            record_type=item.extractor.record_type,
            content_key=item.digest.hex(),
            content_hash=content_hash(item.fields),
            dictionary_version=version,
            fields=item.fields,
        )
        if item.unparsed:
            data["unparsed"] = item.unparsed
        if vector is not None and self.embedder is not None:
            data["embedding"] = vector
            data["embedding_model"] = self.embedder.name
        return data

    def _new_cleaner(self) -> Cleaner:
        return Cleaner(
            self.dictionaries.current,
            default_currency=self.settings.default_currency,
            dayfirst=self.settings.dayfirst,
        )

    def _wants_embeddings(self) -> bool:
        return any(
            variant.embed_fields
            for extractor in self.extractors.values()
            for variant in extractor.variants()
        )


def parse_record(raw: str | bytes) -> RawRecord:
    """A RawRecord from its JSON: ``invalid_json`` or ``invalid_record`` otherwise."""
    try:
        return RawRecord.model_validate_json(raw)
    except ValidationError as exc:
        invalid_json = any(error["type"] == "json_invalid" for error in exc.errors())
        reason: RecordErrorReason = "invalid_json" if invalid_json else "invalid_record"
        raise RecordError(reason, validation_error_text(exc)) from None
