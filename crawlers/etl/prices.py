"""Numbers and prices as people write them, into exact ``Decimal`` values.

``$1,234.50``, ``1.234,50 €``, ``1 234,56 zł``, ``CHF 1'234.50``, ``₹1,23,456``,
``12,-``: the decimal separator is the last of ``.``/``,`` when both appear; a
separator that appears more than once groups thousands; a lone separator
followed by exactly three digits (``1,234`` / ``1.234``) groups thousands too,
unless the integer part is 0 or the currency has three decimal places (KWD).
Group sizes are checked (a misplaced separator is an error, not a guess), so a
value that is accepted is read one way only. Currencies come from the
dictionaries (symbols, words, ISO codes); two different ones in one price are an
error.

Floats from JSON are read through their shortest ``repr`` (``12.3`` is
``Decimal("12.3")``, not ``12.300000000000000710...``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from crawlers.etl.errors import CleaningError
from crawlers.etl.lexicon import Dictionaries
from crawlers.etl.text import normalize_text

#: a trailing "no cents" mark: ``12,-``, ``12.--``, or a comma and an en or em dash
_NO_CENTS = re.compile(r"[.,][-\u2013\u2014]{1,2}$")
_GROUP_MARKS = " '\u2019"
_SPACED = re.compile(r"\d{1,3}(?:[ '\u2019]\d{3})+(?:[.,]\d+)?")
_PLAIN = re.compile(r"(?:\d+|\d*[.,]\d+|\d[\d.,]*\d)")
_LETTERS = re.compile(r"[^\W\d_]")
#: keys of a money object: ``{"amount": 5, "currency": "EUR"}``
_AMOUNT_KEYS = ("amount", "value", "price")
_CURRENCY_KEYS = ("currency", "currency_code", "currencyCode")


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    #: ISO 4217 code, or None when the price named none and there is no default
    currency: str | None


def _grouped(integer: str, mark: str) -> str:
    """``1,234,567`` (or the Indian ``1,23,45,678``) without its group marks; a
    group of the wrong size is an error."""
    groups = integer.split(mark)
    head, *rest = groups
    western = 1 <= len(head) <= 3 and all(len(g) == 3 for g in rest)
    indian = (
        len(rest) >= 2
        and 1 <= len(head) <= 2
        and all(len(g) == 2 for g in rest[:-1])
        and len(rest[-1]) == 3
    )
    if not (western or indian):
        raise CleaningError(f"misplaced {mark!r} group separator in {integer!r}")
    return "".join(groups)


def parse_number(text: str, *, decimals_hint: int | None = None) -> Decimal:
    """A number in US, European, Swiss or Indian notation (no currency)."""
    s = normalize_text(text).replace("\u2212", "-")
    sign = ""
    if s[:1] in ("+", "-"):
        sign, s = ("-" if s[0] == "-" else ""), s[1:].lstrip()
    s = _NO_CENTS.sub("", s)
    if _SPACED.fullmatch(s):  # spaces or apostrophes group thousands; at most one point
        integer, _, fraction = (
            s.replace("'", " ").replace("\u2019", " ").partition("," if "," in s else ".")
        )
        digits = integer.replace(" ", "") + ("." + fraction if fraction else "")
        return _decimal(sign + digits, text)
    if any(mark in s for mark in _GROUP_MARKS) or not _PLAIN.fullmatch(s):
        raise CleaningError(f"not a number: {text!r}")
    points, commas = s.count("."), s.count(",")
    if points and commas:
        decimal_mark = "." if s.rfind(".") > s.rfind(",") else ","
        group_mark = "," if decimal_mark == "." else "."
        integer, _, fraction = s.rpartition(decimal_mark)
        if decimal_mark in integer:
            raise CleaningError(f"two decimal separators in {text!r}")
        return _decimal(f"{sign}{_grouped(integer, group_mark)}.{fraction}", text)
    mark = "." if points else ","
    count = points or commas
    if count == 0:
        return _decimal(sign + s, text)
    if count > 1:
        return _decimal(sign + _grouped(s, mark), text)
    integer, _, fraction = s.partition(mark)
    groups_thousands = (
        len(fraction) == 3 and 1 <= len(integer) <= 3 and integer != "0" and decimals_hint != 3
    )
    if groups_thousands:
        return _decimal(sign + integer + fraction, text)
    return _decimal(f"{sign}{integer or '0'}.{fraction}", text)


def _decimal(digits: str, original: str) -> Decimal:
    try:
        value = Decimal(digits)
    except InvalidOperation:
        raise CleaningError(f"not a number: {original!r}") from None
    if not value.is_finite():
        raise CleaningError(f"not a finite number: {original!r}")
    return value


def number_from(value: Any, *, decimals_hint: int | None = None) -> Decimal:
    """A JSON scalar or a string as a Decimal (booleans are not numbers)."""
    if isinstance(value, bool):
        raise CleaningError(f"a boolean is not a number: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CleaningError(f"not a finite number: {value!r}")
        return Decimal(repr(value))
    if isinstance(value, Decimal):
        return _decimal(str(value), str(value))
    if isinstance(value, str):
        return parse_number(value, decimals_hint=decimals_hint)
    raise CleaningError(f"not a number: {type(value).__name__}")


def parse_currency(value: Any, dictionaries: Dictionaries) -> str:
    """An ISO 4217 code from a code, a symbol or a word (``€``, ``eur``, ``euros``)."""
    if not isinstance(value, str):
        raise CleaningError(f"not a currency: {type(value).__name__}")
    token = normalize_text(value).casefold()
    code = dictionaries.currency_tokens.get(token)
    if code is None:
        raise CleaningError(f"unknown currency {value!r}")
    return code


def parse_price(value: Any, dictionaries: Dictionaries, default_currency: str = "") -> Money:
    """A price from a number, a string with a currency, or ``{"amount", "currency"}``."""
    if isinstance(value, Mapping):
        amount = next((value[k] for k in _AMOUNT_KEYS if value.get(k) is not None), None)
        if amount is None:
            raise CleaningError(f"no amount in a price object (keys: {', '.join(value)})")
        named = next((value[k] for k in _CURRENCY_KEYS if value.get(k)), None)
        money = parse_price(amount, dictionaries, default_currency)
        if named is None:
            return money
        return Money(money.amount, parse_currency(named, dictionaries))
    if not isinstance(value, str):
        return Money(number_from(value), default_currency or None)
    text = normalize_text(value)
    found = list(dictionaries.currency_pattern.finditer(text))
    codes = {dictionaries.currency_tokens[m.group().casefold()] for m in found}
    if len(codes) > 1:
        raise CleaningError(f"more than one currency in {value!r}: {', '.join(sorted(codes))}")
    rest = dictionaries.currency_pattern.sub(" ", text).strip()
    if not rest or _LETTERS.search(rest):
        raise CleaningError(f"not a price: {value!r}")
    code = codes.pop() if codes else None
    amount = parse_number(rest, decimals_hint=dictionaries.currency_digits.get(code or ""))
    return Money(amount, code or default_currency or None)


def price_text(money: Money, digits: Mapping[str, int]) -> str:
    """An amount's canonical text with at least its currency's decimal places
    (``12.3`` USD -> ``"12.30"``, ``1200`` JPY -> ``"1200"``); extra places are
    kept, never rounded away. Without a currency: :func:`decimal_text`."""
    text = decimal_text(money.amount)
    places = digits.get(money.currency or "", 0)
    missing = places - len(text.partition(".")[2])
    if missing > 0:
        text = (text if "." in text else text + ".") + "0" * missing
    return text


def decimal_text(value: Decimal) -> str:
    """The canonical text of an amount: no exponent, no trailing zeros
    (``Decimal("1.20E+3")`` -> ``"1200"``, ``Decimal("12.50")`` -> ``"12.5"``).
    Exact at any size: string work, no arithmetic context (whose 28 digits
    ``Decimal.normalize`` would round to)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
