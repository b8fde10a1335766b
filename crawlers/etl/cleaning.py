"""Cleaning: every extracted value into its field's one canonical form.

An extractor declares its fields as :class:`FieldSpec` s (a kind, where the value
is in the raw item, whether it is required); :class:`Cleaner` turns the raw
values into JSON-ready ones with the current dictionaries: text without markup
in one Unicode form and the dictionaries' standard spellings, prices as exact
decimal text (at least the currency's decimal places: ``"12.30"``) plus an ISO
4217 code, dates as UTC ISO 8601, brands by their
canonical name. Amounts are strings (``"1234.50"``), not floats: a sink that wants
a Decimal column converts without rounding.

A value that does not clean fails its record (``invalid_value``), unless its
field is lenient (``strict=False``: free-form web items, where "Call for price"
is no reason to lose the product), in which case it becomes None and its raw
text is kept under the row's ``unparsed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from w3lib.url import safe_url_string

from crawlers.etl.errors import CleaningError, RecordError
from crawlers.etl.lexicon import Dictionaries
from crawlers.etl.prices import (
    Money,
    decimal_text,
    number_from,
    parse_currency,
    parse_price,
    price_text,
)
from crawlers.etl.text import key_text, normalize_text, strip_html
from crawlers.etl.values import iso_utc, parse_bool, parse_datetime, parse_int

FieldKind = Literal[
    "text",  # free text: markup out, normalised, standardisation patterns applied
    "label",  # an identifier or code: normalised only (no markup expected)
    "brand",  # a label, then its canonical name from the brands dictionary
    "price",  # an amount, as decimal text; its currency goes to `currency_field`
    "currency",  # an ISO 4217 code from a code, symbol or word
    "decimal",  # a number, as decimal text
    "int",
    "bool",
    "datetime",  # UTC ISO 8601
    "url",  # trimmed and percent-encoded where needed
    "json",  # kept as it came (nested metadata)
]
#: the longest raw text kept for an unparsed lenient value
_UNPARSED_CHARS = 200


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field an extractor produces."""

    name: str
    kind: FieldKind
    #: where to look in the raw item, first present wins (dotted: ``data.price``);
    #: empty: the field's own name
    paths: tuple[str, ...] = ()
    #: absent or empty after cleaning fails the record (``missing_field``)
    required: bool = False
    #: a value that does not clean fails the record; False: None, kept in ``unparsed``
    strict: bool = True
    #: labels only: case-folded (statuses, categories)
    lower: bool = False
    #: prices only: the field that receives the price's currency, unless it has one
    currency_field: str = "currency"

    @property
    def lookup_paths(self) -> tuple[str, ...]:
        return self.paths or (self.name,)


@dataclass(frozen=True, slots=True)
class Cleaned:
    fields: dict[str, Any]
    #: lenient fields whose value did not clean: name -> the raw value's text
    unparsed: dict[str, str]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


class Cleaner:
    """Cleans with one version of the dictionaries (a new version, a new Cleaner)."""

    def __init__(
        self, dictionaries: Dictionaries, *, default_currency: str = "", dayfirst: bool = False
    ) -> None:
        self.dictionaries = dictionaries
        self.default_currency = default_currency
        self.dayfirst = dayfirst

    def clean(self, specs: Sequence[FieldSpec], raw: Mapping[str, Any]) -> Cleaned:
        """Every field of ``specs`` from ``raw`` (name -> raw value); prices last, so a
        currency field of their own wins over the symbol in the price text."""
        fields: dict[str, Any] = {}
        unparsed: dict[str, str] = {}
        ordered = sorted(specs, key=lambda spec: spec.kind == "price")
        for spec in ordered:
            value = raw.get(spec.name)
            if _empty(value):
                fields.setdefault(spec.name, None)
                continue
            try:
                if spec.kind == "price":
                    money = parse_price(
                        self.standardize(value, spec.name) if isinstance(value, str) else value,
                        self.dictionaries,
                        self.default_currency,
                    )
                    if fields.get(spec.currency_field) is not None:
                        money = Money(money.amount, fields[spec.currency_field])
                    fields[spec.currency_field] = money.currency
                    fields[spec.name] = price_text(money, self.dictionaries.currency_digits)
                else:
                    fields[spec.name] = self.value(spec, value)
            except CleaningError as exc:
                if spec.strict:
                    raise RecordError("invalid_value", f"{spec.name}: {exc}") from None
                fields[spec.name] = None
                unparsed[spec.name] = str(value)[:_UNPARSED_CHARS]
        for spec in ordered:
            if spec.kind == "price":  # the row has the column even without a price
                fields.setdefault(spec.currency_field, None)
            if spec.required and _empty(fields.get(spec.name)):
                raise RecordError("missing_field", f"{spec.name} is absent or empty")
        # the declared order (prices were cleaned last), then what prices added
        declared = {spec.name: fields.pop(spec.name, None) for spec in specs}
        return Cleaned({**declared, **fields}, unparsed)

    def value(self, spec: FieldSpec, value: Any) -> Any:
        """One value of one field, cleaned (a :class:`CleaningError` if it does not)."""
        kind = spec.kind
        if kind == "text":
            if isinstance(value, list) and value:  # bullet points, breadcrumbs: one text
                value = "; ".join(_text(part) for part in value if not _empty(part))
            text = self.standardize(strip_html(_text(value)), spec.name)
            return text or None
        if kind in ("label", "brand"):
            text = normalize_text(_text(value))
            if spec.lower:
                text = text.casefold()
            if kind == "brand":
                text = self.dictionaries.brands.get(key_text(text), text)
            return text or None
        if kind == "currency":
            return parse_currency(value, self.dictionaries)
        if kind == "decimal":
            return decimal_text(number_from(value))
        if kind == "int":
            return parse_int(value)
        if kind == "bool":
            return parse_bool(value)
        if kind == "datetime":
            return iso_utc(parse_datetime(value, dayfirst=self.dayfirst))
        if kind == "url":
            url = normalize_text(_text(value))
            return safe_url_string(url) if url else None
        if kind == "json":
            return value
        raise CleaningError(f"unknown field kind {kind!r}")  # pragma: no cover

    def standardize(self, text: str, field: str) -> str:
        """Normalised text with the dictionaries' patterns for ``field`` applied."""
        text = normalize_text(text)
        for fields, pattern, replacement in self.dictionaries.patterns:
            if fields is None or field in fields:
                text = pattern.sub(replacement, text)
        return normalize_text(text)

    def key_value(self, spec: FieldSpec, value: Any) -> Any:
        """A cleaned value as content keys compare it: text as key text (case, punctuation
        and stop words aside), the rest as it is."""
        if isinstance(value, str) and spec.kind in ("text", "brand"):
            return key_text(value, self.dictionaries.stop_words)
        return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CleaningError(f"not text: {type(value).__name__}")
    return str(value)
