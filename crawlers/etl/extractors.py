"""Task-type extractors: which fields a raw item of a kind holds, and where.

A raw record's ``task_type`` picks its extractor. The extractor declares the
fields it produces (:class:`~crawlers.etl.cleaning.FieldSpec`: kind, where in the
item, required or not), the fields that make its content key (two records with
the same key are the same content: the second is a duplicate), and the text
fields it wants embedded. Cleaning, dedup and enrichment are generic; adding a
task type is one class and one registry entry.

The registry is ``EXTRACTORS_BASE`` merged with the ``extra`` mapping (the
``HYDRA_ETL_EXTRACTORS`` setting): name -> class path, a ``None`` value removes a
name, as the project's other ``*_BASE`` registries.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from crawlers.etl.cleaning import Cleaner, FieldSpec
from crawlers.etl.errors import EtlError, RecordError
from crawlers.etl.text import normalize_text, strip_html

#: extractors Hydra ships: task type -> class path
EXTRACTORS_BASE: dict[str, str] = {
    "price_batch": "crawlers.etl.extractors.PriceBatchExtractor",
    "fetch_task": "crawlers.etl.extractors.FetchTaskExtractor",
    "web": "crawlers.etl.extractors.WebItemExtractor",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+")


def lookup(item: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``data.price``), None where the path breaks."""
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def fold_key(key: str) -> str:
    """``Product Name``, ``productName``, ``product-name`` -> ``product_name``."""
    return _NON_WORD.sub("_", _CAMEL.sub("_", key).casefold()).strip("_")


class Extractor:
    """A task type's fields. Subclasses set the class attributes; most need no code."""

    #: what the row is (``price``, ``file``...): rows of one type share a shape
    record_type: ClassVar[str] = ""
    fields: ClassVar[tuple[FieldSpec, ...]] = ()
    #: the fields whose cleaned values identify the content; empty: every field
    content_key: ClassVar[tuple[str, ...]] = ()
    #: fields of which at least one must have a value
    require_any: ClassVar[tuple[str, ...]] = ()
    #: text fields embedded (joined); empty: no embeddings for this type
    embed_fields: ClassVar[tuple[str, ...]] = ()

    def resolve(self, item: Mapping[str, Any]) -> Extractor:
        """The extractor for this item: a task type whose items come in several shapes
        (files and job results) answers one per shape."""
        return self

    def variants(self) -> tuple[Extractor, ...]:
        """Every extractor :meth:`resolve` may answer."""
        return (self,)

    def extract(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Field name -> raw value: the first of its paths that holds something."""
        raw: dict[str, Any] = {}
        for spec in self.fields:
            for path in spec.lookup_paths:
                value = lookup(item, path)
                if value is not None and value != "":
                    raw[spec.name] = value
                    break
        return raw

    def extra(self, item: Mapping[str, Any], cleaner: Cleaner) -> dict[str, Any] | None:
        """What the item holds beyond the declared fields, if the type keeps it."""
        return None

    def check(self, fields: Mapping[str, Any]) -> None:
        if self.require_any and all(fields.get(name) is None for name in self.require_any):
            raise RecordError("missing_field", f"none of {', '.join(self.require_any)} has a value")

    def embedding_text(self, fields: Mapping[str, Any]) -> str:
        parts = [str(fields[name]) for name in self.embed_fields if fields.get(name)]
        return ". ".join(parts)


def _label(name: str, *paths: str, required: bool = False, lower: bool = False) -> FieldSpec:
    return FieldSpec(name, "label", paths, required=required, lower=lower)


class PriceBatchExtractor(Extractor):
    """Seed 000's price items: the batch's ID, and the price API's JSON body in ``data``
    (``{"id", "price", "currency", "updated_at"}``; other APIs name them otherwise)."""

    record_type = "price"
    fields = (
        _label("id", "id", "data.id", required=True),
        FieldSpec("price", "price", ("data.price", "data.amount", "data.value", "price")),
        FieldSpec("currency", "currency", ("data.currency", "data.currency_code", "currency")),
        _label("status", "data.status", "data.availability", "status", lower=True),
        FieldSpec("updated_at", "datetime", ("data.updated_at", "data.timestamp", "data.date")),
        FieldSpec("fetched_at", "datetime"),
        _label("run_id"),
        _label("batch_id"),
        FieldSpec("attempt", "int"),
    )
    content_key = ("id", "price", "currency", "status")

    def extract(self, item: Mapping[str, Any]) -> dict[str, Any]:
        raw = super().extract(item)
        data = item.get("data")
        if "price" not in raw and data is not None and not isinstance(data, Mapping | list):
            raw["price"] = data  # the API answered a bare number or string
        return raw


class FileRecordExtractor(Extractor):
    """A file a fetch job checked (seed 003): its channel, path and content hash.
    The worker's temporary ``local_path`` is left out (meaningless elsewhere)."""

    record_type = "file"
    fields = (
        _label("job_id", required=True),
        _label("channel_id", required=True),
        _label("source_type", lower=True),
        _label("path", required=True),
        FieldSpec("size", "int"),
        _label("sha256", required=True, lower=True),
        _label("outcome", lower=True),
        FieldSpec("error", "text"),
    )
    content_key = ("channel_id", "path", "sha256")


class JobResultExtractor(Extractor):
    """The end of a fetch job: its status and counts."""

    record_type = "job_result"
    fields = (
        _label("job_id", required=True),
        _label("channel_id", required=True),
        _label("source_type", lower=True),
        _label("status", required=True, lower=True),
        FieldSpec("message", "text"),
        FieldSpec("files_processed", "int"),
        FieldSpec("files_uploaded", "int"),
        FieldSpec("execution_time_seconds", "decimal"),
        FieldSpec("metadata", "json"),
        FieldSpec("error", "text"),
    )
    content_key = ("job_id", "status", "files_processed", "files_uploaded")


class FetchTaskExtractor(Extractor):
    """``fetch_task`` records are files or job results, told apart by their fields."""

    record_type = "fetch"
    files = FileRecordExtractor()
    results = JobResultExtractor()

    def resolve(self, item: Mapping[str, Any]) -> Extractor:
        if "sha256" in item:
            return self.files
        if "files_processed" in item or "status" in item:
            return self.results
        raise RecordError("missing_field", "a fetch_task item is a file (sha256) or a job result")

    def variants(self) -> tuple[Extractor, ...]:
        return (self.files, self.results)


def _lenient(name: str, kind: Any, *paths: str, lower: bool = False) -> FieldSpec:
    return FieldSpec(name, kind, paths, strict=False, lower=lower)


class WebItemExtractor(Extractor):
    """Items of web/API channels (generated fetchers): free-form, so every field is
    looked up under its usual names in any case style (``productName``,
    ``Product Name``), and a value that does not clean is set aside, not fatal.
    Fields beyond these are kept, normalised, under ``extra``."""

    record_type = "web_item"
    fields = (
        _lenient("title", "text", "title", "name", "product_name", "product_title", "headline"),
        _lenient("description", "text", "description", "desc", "summary", "body", "details"),
        _lenient("price", "price", "price", "amount", "current_price", "sale_price", "cost"),
        _lenient("currency", "currency", "currency", "currency_code", "price_currency"),
        _lenient("url", "url", "url", "link", "href", "product_url", "permalink"),
        _lenient("sku", "label", "sku", "id", "code", "product_id", "item_id", "mpn", "gtin"),
        _lenient("brand", "brand", "brand", "manufacturer", "maker", "vendor"),
        _lenient("category", "text", "category", "product_category"),
        _lenient("image", "url", "image", "image_url", "img", "thumbnail"),
        _lenient("availability", "label", "availability", "in_stock", "stock", lower=True),
        _lenient("published_at", "datetime", "published_at", "date", "updated_at", "created_at"),
        _lenient("rating", "decimal", "rating", "stars", "score"),
    )
    content_key = ("url", "sku", "title", "price", "currency")
    require_any = ("title", "url", "sku")
    embed_fields = ("title", "description")

    def extract(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return super().extract(self._folded(item))

    def extra(self, item: Mapping[str, Any], cleaner: Cleaner) -> dict[str, Any] | None:
        used = {path for spec in self.fields for path in spec.lookup_paths}
        rest: dict[str, Any] = {}
        for key, value in self._folded(item).items():
            if key in used or value is None or value == "":
                continue
            rest[key] = normalize_text(strip_html(value)) if isinstance(value, str) else value
        return rest or None

    @staticmethod
    def _folded(item: Mapping[str, Any]) -> dict[str, Any]:
        folded: dict[str, Any] = {}
        for key, value in item.items():
            folded.setdefault(fold_key(str(key)), value)  # the first spelling wins
        return folded


def load_extractor(path: str) -> Extractor:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise EtlError(f"extractor {path!r} cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Extractor)):
        raise EtlError(f"extractor {path!r} is not an Extractor subclass")
    return cls()


def build_extractors(extra: Mapping[str, str | None] | None = None) -> dict[str, Extractor]:
    """Task type -> extractor: ``EXTRACTORS_BASE`` merged with ``extra`` (None removes)."""
    merged: dict[str, str | None] = {**EXTRACTORS_BASE, **(extra or {})}
    return {name: load_extractor(path) for name, path in merged.items() if path}


def extractor_for(extractors: Mapping[str, Extractor], task_type: str) -> Extractor:
    try:
        return extractors[task_type]
    except KeyError:
        known = ", ".join(sorted(extractors))
        raise RecordError(
            "unknown_task_type", f"no extractor for task type {task_type!r} (known: {known})"
        ) from None
