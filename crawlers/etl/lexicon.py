"""What the dictionaries hold, checked, and the compiled snapshot cleaning reads.

A dictionary is a JSON document ``{"revision": N, "description": ..., "data": {...}}``
(the files in ``crawlers/etl/dictionaries/``, the same text in Redis). Each name
has a pydantic model, so a bad edit in Redis (an unknown currency code, a regex
that does not compile) is refused at load time, and the processor keeps the
snapshot it had instead of failing records one by one.

A :class:`Dictionaries` is immutable and compiled once per version (regexes,
case-folded lookup tables): cleaning a record reads plain dicts, with no Redis
round trip and no parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crawlers.etl.errors import EtlError
from crawlers.etl.text import key_text, normalize_text
from crawlers.models.validation import validation_error_text

_ISO_CODE = re.compile(r"[A-Z]{3}")
#: a letter (not a digit or underscore): currency words must not touch one
_LETTER = "[^\\W\\d_]"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurrencyData(_Strict):
    codes: dict[str, int] = Field(description="ISO 4217 code -> digits after the point.")
    symbols: dict[str, str] = Field(description="Symbol -> code (`$` -> USD, `zł` -> PLN).")
    aliases: dict[str, str] = Field(description="Word -> code, any case (`euro` -> EUR).")

    @model_validator(mode="after")
    def _known_codes(self) -> CurrencyData:
        bad = [code for code in self.codes if not _ISO_CODE.fullmatch(code)]
        bad += [
            f"{token} -> {code}" for token, code in self.symbols.items() if code not in self.codes
        ]
        bad += [
            f"{token} -> {code}" for token, code in self.aliases.items() if code not in self.codes
        ]
        if bad:
            raise ValueError(f"not an ISO 4217 code listed in `codes`: {', '.join(bad[:5])}")
        return self


class StopWordsData(_Strict):
    languages: dict[str, list[str]] = Field(description="Language -> its stop words.")


class PatternRule(_Strict):
    pattern: str = Field(description="A Python regular expression.")
    replacement: str = Field("", description="`re.sub` replacement (`\\1` for a group).")
    fields: list[str] = Field(default_factory=lambda: ["*"], description="`*`: every field.")
    ignore_case: bool = False
    description: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"does not compile: {exc}") from None
        return value


class PatternsData(_Strict):
    rules: list[PatternRule] = Field(description="Applied in order to cleaned text fields.")


class BrandsData(_Strict):
    brands: dict[str, list[str]] = Field(description="Canonical name -> its other spellings.")


#: every dictionary: name -> model of its ``data``
DICTIONARY_MODELS: dict[str, type[_Strict]] = {
    "currencies": CurrencyData,
    "stop_words": StopWordsData,
    "patterns": PatternsData,
    "brands": BrandsData,
}


class DictionaryDocument(_Strict):
    """One dictionary as stored: its data and the revision that orders its edits."""

    revision: int = Field(ge=1, description="Higher replaces lower (files vs Redis).")
    description: str = ""
    data: dict[str, Any]

    def validated(self, name: str) -> _Strict:
        model = DICTIONARY_MODELS.get(name)
        if model is None:
            raise EtlError(f"dictionary {name!r}: unknown (known: {', '.join(DICTIONARY_MODELS)})")
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise EtlError(f"dictionary {name!r}: {validation_error_text(exc)}") from None


def parse_document(name: str, text: str | bytes) -> DictionaryDocument:
    """A dictionary's JSON, checked: the document and its data's model."""
    try:
        document = DictionaryDocument.model_validate_json(text)
    except ValidationError as exc:
        raise EtlError(f"dictionary {name!r}: {validation_error_text(exc)}") from None
    document.validated(name)
    return document


def read_files(folder: Path) -> dict[str, DictionaryDocument]:
    """Every ``<name>.json`` of ``folder`` whose name is a known dictionary."""
    documents = {}
    for name in DICTIONARY_MODELS:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise EtlError(f"dictionary file {path} is missing")
        documents[name] = parse_document(name, path.read_bytes())
    return documents


def _token_regex(tokens: list[str]) -> str:
    """One alternative per token, longest first (``US$`` before ``$``); a token
    starting or ending with a letter must not touch another letter (``eur`` is not
    in ``neuron``)."""
    parts = []
    for token in sorted(tokens, key=lambda t: (-len(t), t)):
        part = re.escape(token)
        if re.match(_LETTER, token):
            part = f"(?<!{_LETTER}){part}"
        if re.match(_LETTER, token[-1]):
            part = f"{part}(?!{_LETTER})"
        parts.append(part)
    return "|".join(parts)


@dataclass(frozen=True)
class Dictionaries:
    """One version of every dictionary, compiled for cleaning."""

    version: int
    revisions: Mapping[str, int]
    currency_digits: Mapping[str, int]
    #: case-folded symbol, alias or code -> ISO code
    currency_tokens: Mapping[str, str]
    currency_pattern: re.Pattern[str]
    stop_words: frozenset[str]
    #: (fields it applies to, or None for all; regex; replacement)
    patterns: tuple[tuple[frozenset[str] | None, re.Pattern[str], str], ...]
    #: key text of a spelling -> canonical brand
    brands: Mapping[str, str]
    documents: Mapping[str, DictionaryDocument] = field(repr=False)

    @classmethod
    def build(cls, version: int, documents: Mapping[str, DictionaryDocument]) -> Dictionaries:
        missing = sorted(set(DICTIONARY_MODELS) - set(documents))
        if missing:
            raise EtlError(f"dictionaries missing: {', '.join(missing)}")
        currencies = documents["currencies"].validated("currencies")
        stop_data = documents["stop_words"].validated("stop_words")
        pattern_data = documents["patterns"].validated("patterns")
        brand_data = documents["brands"].validated("brands")
        assert isinstance(currencies, CurrencyData)
        assert isinstance(stop_data, StopWordsData)
        assert isinstance(pattern_data, PatternsData)
        assert isinstance(brand_data, BrandsData)
        tokens = {code.casefold(): code for code in currencies.codes}
        for table in (currencies.aliases, currencies.symbols):
            tokens.update({normalize_text(t).casefold(): c for t, c in table.items()})
        # one word each (key text splits "don't" in two: such entries could never match)
        folded = (key_text(word) for words in stop_data.languages.values() for word in words)
        stop_words = frozenset(word for word in folded if word and " " not in word)
        patterns = tuple(
            (
                None if "*" in rule.fields else frozenset(rule.fields),
                re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0),
                rule.replacement,
            )
            for rule in pattern_data.rules
        )
        brands: dict[str, str] = {}
        for canonical, spellings in brand_data.brands.items():
            for spelling in [canonical, *spellings]:
                brands[key_text(spelling)] = canonical
        return cls(
            version=version,
            revisions={name: doc.revision for name, doc in documents.items()},
            currency_digits=dict(currencies.codes),
            currency_tokens=tokens,
            currency_pattern=re.compile(_token_regex(list(tokens)), re.IGNORECASE),
            stop_words=stop_words,
            patterns=patterns,
            brands=brands,
            documents=dict(documents),
        )

    @classmethod
    def from_files(cls, folder: Path, version: int = 0) -> Dictionaries:
        return cls.build(version, read_files(folder))


def document_json(document: DictionaryDocument) -> str:
    """The canonical text of a document (what is written to Redis)."""
    return json.dumps(document.model_dump(), sort_keys=True, ensure_ascii=False)
