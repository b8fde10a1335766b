"""Cleaning: text, HTML, prices, dates, booleans, numbers, against strings met in the
wild, plus properties that must hold for any value (hypothesis)."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlers.etl.cleaning import Cleaner, FieldSpec
from crawlers.etl.errors import CleaningError, RecordError
from crawlers.etl.lexicon import Dictionaries
from crawlers.etl.prices import Money, decimal_text, parse_currency, parse_number, parse_price
from crawlers.etl.settings import PACKAGED_DICTIONARIES
from crawlers.etl.text import key_text, normalize_text, strip_html
from crawlers.etl.values import iso_utc, parse_bool, parse_datetime, parse_int

DICTS = Dictionaries.from_files(PACKAGED_DICTIONARIES)
#: no .hypothesis/ folder in the work tree
PROPERTY = settings(database=None, max_examples=300, deadline=None)

PRICES = [
    ("$1,234.50", "1234.50", "USD"),
    ("1.234,50 €", "1234.50", "EUR"),
    ("12.3 USD", "12.3", "USD"),
    ("12.3USD", "12.3", "USD"),
    ("EUR 5", "5", "EUR"),
    ("¥1200", "1200", "JPY"),
    ("¥1,200", "1200", "JPY"),
    ("£3.99", "3.99", "GBP"),
    ("1 234,56 zł", "1234.56", "PLN"),
    ("1\u00a0234,56\u00a0zł", "1234.56", "PLN"),  # non-breaking spaces
    ("1\u202f234,56 €", "1234.56", "EUR"),  # narrow no-break space (French)
    ("CHF 1'234.50", "1234.50", "CHF"),
    ("₹1,23,456.00", "123456.00", "INR"),
    ("Rs. 499", "499", "INR"),
    ("R$ 10,90", "10.90", "BRL"),
    ("US$ 5", "5", "USD"),
    ("C$ 19.99", "19.99", "CAD"),
    ("5 euros", "5", "EUR"),
    ("1 299 \u0440\u0443\u0431.", "1299", "RUB"),
    ("30 kr", "30", "SEK"),
    ("12,-", "12", None),
    ("12,\u2013 €", "12", "EUR"),
    ("0,99", "0.99", None),
    ("0.500", "0.500", None),
    ("1,234", "1234", None),  # a lone separator before three digits groups thousands
    ("1.234", "1234", None),
    ("1.234 KWD", "1.234", "KWD"),  # ...unless the currency has three decimal places
    ("1,234,567.89", "1234567.89", None),
    ("1.234.567,89", "1234567.89", None),
    ("-$5.00", "-5.00", "USD"),
    ("$ -5", "-5", "USD"),
    ("\uff11\uff12\uff13 円", "123", "JPY"),  # full-width digits
    ("usd 7", "7", "USD"),
    ("€12", "12", "EUR"),
    ("$12 USD", "12", "USD"),  # the same currency twice
]

BAD_PRICES = [
    "Call for price",
    "$10 - $20",  # a range
    "€5 $5",  # two currencies
    "1,23.45",  # misplaced group
    "12.34.56,7.8",
    "",
    "$",
    "free",
    "12 eurox",
]


@pytest.mark.parametrize(("text", "amount", "currency"), PRICES)
def test_prices_from_real_world_strings(text: str, amount: str, currency: str | None) -> None:
    money = parse_price(text, DICTS)
    assert money == Money(Decimal(amount), currency)
    assert str(money.amount) == amount  # exact: no float on the way


@pytest.mark.parametrize("text", BAD_PRICES)
def test_what_is_not_a_price_is_an_error_not_a_guess(text: str) -> None:
    with pytest.raises(CleaningError):
        parse_price(text, DICTS)


def test_prices_from_json_values_and_money_objects() -> None:
    assert parse_price(12.3, DICTS) == Money(Decimal("12.3"), None)  # repr, not binary
    assert parse_price(7, DICTS, "EUR") == Money(Decimal(7), "EUR")
    assert parse_price({"amount": "1.234,50", "currency": "eur"}, DICTS).currency == "EUR"
    assert parse_price({"value": 3, "currencyCode": "£"}, DICTS) == Money(Decimal(3), "GBP")
    for bad in (True, float("nan"), float("inf"), {"currency": "USD"}, [1]):
        with pytest.raises(CleaningError):
            parse_price(bad, DICTS)


def test_currencies_by_code_symbol_or_word() -> None:
    full_width_usd = "\uff35\uff33\uff24"
    texts = ("usd", "€", "euros", " zł ", full_width_usd)
    assert [parse_currency(c, DICTS) for c in texts] == ["USD", "EUR", "EUR", "PLN", "USD"]
    with pytest.raises(CleaningError):
        parse_currency("dollarz", DICTS)


@st.composite
def amounts(draw: st.DrawFn) -> Decimal:
    """A price: 0 to 2 decimal places, up to a trillion."""
    places = draw(st.integers(0, 2))
    units = draw(st.integers(0, 10**14))
    return Decimal(units).scaleb(-places)


def us_style(value: Decimal) -> str:
    places = max(0, -int(value.as_tuple().exponent))
    return f"{value:,.{places}f}"


def eu_style(value: Decimal) -> str:
    return us_style(value).translate(str.maketrans(",.", ".,"))


@PROPERTY
@given(amounts(), st.sampled_from(["$", "€", "£", "zł", "CHF", "EUR", "₹", "R$"]), st.booleans())
def test_any_amount_in_us_or_eu_style_round_trips(
    value: Decimal, symbol: str, before: bool
) -> None:
    code = DICTS.currency_tokens[symbol.casefold()]
    for text in (us_style(value), eu_style(value)):
        priced = f"{symbol}{text}" if before else f"{text} {symbol}"
        assert parse_price(priced, DICTS) == Money(value, code), priced
        assert parse_number(text) == value, text


@PROPERTY
@given(amounts())
def test_swiss_and_spaced_groups_round_trip(value: Decimal) -> None:
    us = us_style(value)
    assert parse_number(us.replace(",", "'")) == value
    assert parse_number(us.replace(",", " ").replace(".", ",")) == value


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9)))
def test_decimal_text_is_exact_and_plain(value: Decimal) -> None:
    text = decimal_text(value)
    assert Decimal(text) == value
    assert "E" not in text and not (text.endswith("0") and "." in text)


TEXTS = [
    ("<p>Hello&nbsp;<b>world</b></p>", "Hello world"),
    ("<div>a</div><div>b</div>", "a b"),
    ("line<br>break", "line break"),
    ("AT&amp;T", "AT&T"),
    ("<script>var x = '<p>no</p>';</script>Visible", "Visible"),
    ("<style>p{color:red}</style>Text<!-- a comment -->", "Text"),
    ("a < b and c > d", "a < b and c > d"),
    ("  many \t\n spaces\u00a0here  ", "many spaces here"),
    ("zero\u200bwidth soft\u00adhyphen", "zerowidth softhyphen"),
    ("\ufb01ne ligature, \uff26\uff35\uff2c\uff2c width", "fine ligature, FULL width"),
    ("iPhone™ 15®", "iPhone 15"),
    ("Cafe\u0301", "Café"),  # combining accent composed
]


@pytest.mark.parametrize(("raw", "clean"), TEXTS)
def test_text_is_stripped_of_markup_and_normalised(raw: str, clean: str) -> None:
    assert normalize_text(strip_html(raw)) == clean


@PROPERTY
@given(st.text())
def test_normalising_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert "  " not in once and once == once.strip()


@PROPERTY
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_escaped_text_survives_html_stripping(text: str) -> None:
    assert normalize_text(strip_html(f"<p>{html.escape(text)}</p>")) == normalize_text(text)


def test_key_text_ignores_case_punctuation_and_stop_words() -> None:
    a = key_text("The Apple iPhone 15 — Red!", DICTS.stop_words)
    b = key_text("apple IPHONE 15 red", DICTS.stop_words)
    assert a == b == "apple iphone 15 red"


DATES = [
    ("2024-03-05T10:00:00Z", "2024-03-05T10:00:00+00:00"),
    ("2024-03-05T10:00:00+02:00", "2024-03-05T08:00:00+00:00"),
    ("2024-03-05 10:00", "2024-03-05T10:00:00+00:00"),  # naive: UTC
    ("2024-03-05", "2024-03-05T00:00:00+00:00"),
    ("20240305", "2024-03-05T00:00:00+00:00"),
    ("Tue, 05 Mar 2024 10:00:00 GMT", "2024-03-05T10:00:00+00:00"),
    ("Tue, 05 Mar 2024 10:00:00 -0500", "2024-03-05T15:00:00+00:00"),
    ("March 5, 2024 10:00 PM PST", "2024-03-06T06:00:00+00:00"),
    ("5 March 2024 14:30 CET", "2024-03-05T13:30:00+00:00"),
    ("05.03.2024", "2024-03-05T00:00:00+00:00"),  # dotted: day first
    ("03/05/2024", "2024-03-05T00:00:00+00:00"),  # slashed: US month first by default
    ("1709632800", "2024-03-05T10:00:00+00:00"),  # epoch seconds
    ("1709632800123", "2024-03-05T10:00:00.123000+00:00"),  # epoch milliseconds
    ("2024-03-05T10:00:00.123456789Z", "2024-03-05T10:00:00.123456+00:00"),
]


@pytest.mark.parametrize(("raw", "iso"), DATES)
def test_dates_to_utc_iso(raw: str, iso: str) -> None:
    assert iso_utc(parse_datetime(raw)) == iso


def test_dates_from_numbers_and_objects() -> None:
    assert iso_utc(parse_datetime(1709632800)) == "2024-03-05T10:00:00+00:00"
    assert iso_utc(parse_datetime(1709632800.5)) == "2024-03-05T10:00:00.500000+00:00"
    assert iso_utc(parse_datetime(1709632800123456)) == "2024-03-05T10:00:00.123456+00:00"
    assert iso_utc(parse_datetime(datetime(2024, 3, 5, 10))) == "2024-03-05T10:00:00+00:00"
    assert parse_datetime("03/05/2024", dayfirst=True) == datetime(2024, 5, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw", ["yesterday", "2024", "Mar 5 2024 10:00 XYZ", "2024-13-45", True, [2024], 12]
)
def test_what_is_not_a_date_is_an_error(raw: Any) -> None:
    with pytest.raises(CleaningError):
        parse_datetime(raw)


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(1975, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, None]),
    ),
    st.sampled_from([timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-8)]),
)
def test_any_iso_datetime_or_epoch_round_trips(moment: datetime, offset: timedelta) -> None:
    from datetime import timezone

    utc = moment.replace(tzinfo=UTC)
    shifted = utc.astimezone(timezone(offset))
    assert parse_datetime(shifted.isoformat()) == utc
    assert parse_datetime(moment.replace(tzinfo=None).isoformat()) == utc  # naive is UTC
    epoch = (utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parse_datetime(epoch) == utc  # microseconds
    if epoch % 1000 == 0:
        assert parse_datetime(str(epoch // 1000)) == utc  # milliseconds


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("Yes", True), ("ON", True), ("1", True), (1, True), ("no", False),
     ("F", False), ("off", False), (0, False), (False, False)],
)  # fmt: skip
def test_booleans(raw: Any, value: bool) -> None:
    assert parse_bool(raw) is value


@pytest.mark.parametrize("raw", ["maybe", 2, None, "", 1.0])
def test_what_is_not_a_boolean(raw: Any) -> None:
    with pytest.raises(CleaningError):
        parse_bool(raw)


def test_integers() -> None:
    assert [parse_int(v) for v in ("1,234", "1 234", "12", 12.0, "-3", 7)] == [
        1234,
        1234,
        12,
        12,
        -3,
        7,
    ]
    for bad in ("12.5", 12.5, True, "ten", float("nan")):
        with pytest.raises(CleaningError):
            parse_int(bad)


def test_patterns_brands_and_field_specs() -> None:
    cleaner = Cleaner(DICTS, default_currency="EUR")
    specs = (
        FieldSpec("title", "text"),
        FieldSpec("brand", "brand"),
        FieldSpec("price", "price"),
        FieldSpec("currency", "currency"),
        FieldSpec("status", "label", lower=True),
        FieldSpec("sku", "label", required=True),
    )
    raw = {
        "title": '<h1>Monitor 27" 2tb w/o stand, 6pk</h1>',
        "brand": "Hewlett-Packard",
        "price": "Price: 1.299,00",
        "status": " In Stock ",
        "sku": "A1",
    }
    cleaned = cleaner.clean(specs, raw).fields
    assert cleaned == {
        "title": "Monitor 27-inch 2 TB without stand, 6-pack",
        "brand": "HP",
        "price": "1299.00",
        "currency": "EUR",  # the default: the price named none
        "status": "in stock",
        "sku": "A1",
    }
    # a currency field of the record's own wins over the symbol in the price text
    assert cleaner.clean(specs, {**raw, "price": "$5", "currency": "CAD"}).fields["currency"] == (
        "CAD"
    )
    with pytest.raises(RecordError) as missing:
        cleaner.clean(specs, {**raw, "sku": "  "})
    assert missing.value.reason == "missing_field"
    with pytest.raises(RecordError) as invalid:
        cleaner.clean(specs, {**raw, "price": "Call us"})
    assert (invalid.value.reason, invalid.value.detail.split(":")[0]) == ("invalid_value", "price")
    lenient = (FieldSpec("price", "price", strict=False),)
    result = cleaner.clean(lenient, {"price": "Call us"})
    assert result.fields == {"price": None, "currency": None}  # no price, no currency
    assert result.unparsed == {"price": "Call us"}
