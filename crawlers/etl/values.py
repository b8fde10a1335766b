"""Dates, booleans and integers from the forms sources send them in.

Dates become aware UTC datetimes: ISO 8601 first (the standard library's parser,
which is exact and fast), then dateutil for what people and headers write
(``March 5, 2024 10:00 PM PST``, ``Tue, 05 Mar 2024 10:00:00 GMT``, ``05.03.2024``;
the standard library's RFC 2822 parser is not used: it drops what it does not
understand, such as ``PM`` or an unknown zone, and answers a wrong time). dateutil is
a dependency of croniter and botocore, so it is always installed. A time without
a zone is taken as UTC; a zone name not in ``_ZONES`` is an error rather than a
silent UTC (it would shift the time by hours). Numbers are Unix epochs,
in seconds, milliseconds or microseconds by their magnitude.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

from dateutil import parser as date_parser  # type: ignore[import-untyped]

from crawlers.etl.errors import CleaningError
from crawlers.etl.prices import parse_number
from crawlers.etl.text import normalize_text

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: smaller numbers are not epochs of anything fetched (1e8 s is March 1973): "2024"
#: is a year, not 33 minutes after 1970
_EPOCH_FROM = 10**8
#: an epoch this large is in milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)
_MILLIS_FROM = 10**11
_MICROS_FROM = 10**14
_NUMERIC = re.compile(r"[+-]?\d+(?:\.\d+)?")
_DIGIT = re.compile(r"\d")
_DOTTED = re.compile(r"\d{1,2}\.\d{1,2}\.\d{2,4}\b")
#: zone abbreviations (dateutil knows none by itself: it warns, then ignores them)
_ZONES: dict[str, int] = {
    "UTC": 0, "GMT": 0, "Z": 0, "UT": 0,
    "EST": -5 * 3600, "EDT": -4 * 3600, "CST": -6 * 3600, "CDT": -5 * 3600,
    "MST": -7 * 3600, "MDT": -6 * 3600, "PST": -8 * 3600, "PDT": -7 * 3600,
    "CET": 3600, "CEST": 2 * 3600, "EET": 2 * 3600, "EEST": 3 * 3600,
    "WET": 0, "WEST": 3600, "BST": 3600, "MSK": 3 * 3600, "JST": 9 * 3600,
    "KST": 9 * 3600, "AEST": 10 * 3600, "AEDT": 11 * 3600,
}  # fmt: skip
_TRUE = frozenset({"true", "t", "yes", "y", "1", "on", "si", "oui", "ja", "да"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", "non", "nein", "нет"})


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_epoch(seconds: float | Decimal) -> datetime:
    """A Unix epoch in seconds, milliseconds or microseconds (by magnitude), exact to
    the microsecond (Decimal arithmetic, no float rounding)."""
    number = Decimal(repr(seconds)) if isinstance(seconds, float) else Decimal(seconds)
    if not number.is_finite() or number < _EPOCH_FROM:
        raise CleaningError(f"not an epoch (too small, or not finite): {seconds!r}")
    if number >= _MICROS_FROM:
        micros = number
    elif number >= _MILLIS_FROM:
        micros = number * 1000
    else:
        micros = number * 1_000_000
    try:
        return _EPOCH + timedelta(microseconds=int(micros.to_integral_value()))
    except OverflowError:
        raise CleaningError(f"not an epoch (out of range): {seconds!r}") from None


def parse_datetime(value: Any, *, dayfirst: bool = False) -> datetime:
    """An aware UTC datetime from a datetime, a date, an epoch or a string."""
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, bool):
        raise CleaningError(f"a boolean is not a date: {value!r}")
    if isinstance(value, int | float | Decimal):
        return from_epoch(value)
    if not isinstance(value, str):
        raise CleaningError(f"not a date: {type(value).__name__}")
    text = normalize_text(value)
    if _NUMERIC.fullmatch(text):
        if len(text) == 8:  # 20240305, the basic ISO date
            try:
                return datetime.strptime(text, "%Y%m%d").replace(tzinfo=UTC)
            except ValueError:
                pass
        return from_epoch(Decimal(text))
    if not _DIGIT.search(text):  # dateutil would take "March" as today's day in March
        raise CleaningError(f"not a date: {value!r}")
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        pass
    # DD.MM.YYYY is day first wherever it is written (no one writes MM.DD.YYYY)
    return _utc(_dateutil(text, value, dayfirst or bool(_DOTTED.match(text))))


def _zone(name: str | None, offset: int | None) -> tzinfo | None:
    """dateutil's zone lookup: known abbreviations, numeric offsets, else an error
    (dateutil alone would warn and return the time as if it had no zone)."""
    if name and name.upper() in _ZONES:
        return timezone(timedelta(seconds=_ZONES[name.upper()]))
    if offset is not None:
        return timezone(timedelta(seconds=offset))
    if name:
        raise CleaningError(f"unknown time zone {name!r}")
    return None


def _dateutil(text: str, original: str, dayfirst: bool) -> datetime:
    try:
        parsed: datetime = date_parser.parse(text, dayfirst=dayfirst, tzinfos=_zone)
    except CleaningError:
        raise
    except (ValueError, OverflowError) as exc:
        raise CleaningError(f"not a date: {original!r} ({exc})") from None
    return parsed


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC: ``2024-03-05T10:00:00+00:00`` (microseconds only if any)."""
    return _utc(value).isoformat()


def parse_bool(value: Any) -> bool:
    """``true``/``yes``/``on``/``1`` and their opposites, any case; 0 and 1 as numbers."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = normalize_text(value).casefold()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise CleaningError(f"not a boolean: {value!r}")


def parse_int(value: Any) -> int:
    """An integer from a number or a string (``1,234`` / ``1 234``); ``12.0`` is 12,
    ``12.5`` is an error (a count does not round)."""
    if isinstance(value, bool):
        raise CleaningError(f"a boolean is not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
    elif isinstance(value, str):
        number = parse_number(value)
    else:
        raise CleaningError(f"not an integer: {type(value).__name__}")
    if not number.is_finite() or number != number.to_integral_value():
        raise CleaningError(f"not an integer: {value!r}")
    return int(number)
