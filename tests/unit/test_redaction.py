"""The one redaction helper: URLs, free text, JSON payloads, log records."""

from __future__ import annotations

import json
import logging

import pytest

from crawlers.extensions.log_redaction import RedactingFilter
from crawlers.models.redaction import Redactor


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host/p", "https://user:***@host/p"),
        ("https://tok3n@host/p", "https://***@host/p"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("https://h/p?token=abc&page=2", "https://h/p?token=***&page=2"),
        ("https://h/p?sig=abc&X-Api-Key=k", "https://h/p?sig=***&X-Api-Key=***"),
        ("https://h/p?page=2", "https://h/p?page=2"),
    ],
)
def test_urls_lose_their_credentials(url: str, expected: str) -> None:
    assert Redactor().url(url) == expected


def test_configured_query_parameters_are_masked_too() -> None:
    assert Redactor.with_params(["tenant"]).url("https://h/?tenant=acme") == "https://h/?tenant=***"
    assert Redactor().url("https://h/?tenant=acme") == "https://h/?tenant=acme"


def test_urls_inside_text_and_json_are_redacted() -> None:
    redactor = Redactor()
    text = "Error downloading <POST https://u:pw@api.example/price/1?api_key=k>: timeout"
    assert redactor.text(text) == (
        "Error downloading <POST https://u:***@api.example/price/1?api_key=***>: timeout"
    )
    payload = json.dumps({"url_template": "https://u:pw@h/{id}", "password": "x", "ids": ["1"]})
    masked, redacted = redactor.payload(payload)
    assert redacted
    assert json.loads(masked) == {
        "url_template": "https://u:***@h/{id}",
        "password": "***",
        "ids": ["1"],
    }
    assert redactor.payload('{"ids": [1]}  ') == ('{"ids": [1]}  ', False)  # clean: kept raw


def test_payloads_that_are_not_json_or_too_deep_are_handled() -> None:
    redactor = Redactor()
    assert redactor.payload("not json {") == ("not json {", False)
    deep = "[" * 100_000
    assert redactor.payload(deep) == (deep, False)
    nested = "[" * 990 + "]" * 990  # parses, but walking it would hit the recursion limit
    assert redactor.payload(nested)[0] == nested
    assert redactor.payload("see https://u:pw@h/") == ("see https://u:***@h/", True)


def test_log_records_are_redacted_message_and_traceback() -> None:
    record_filter = RedactingFilter(Redactor())
    try:
        raise ValueError("cannot reach https://u:pw@h/x")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "Crawled <%s>", ("https://u:pw@h/x?token=1",), exc_info
    )
    assert record_filter.filter(record)
    assert record.getMessage() == "Crawled <https://u:***@h/x?token=***>"
    assert record.exc_text is not None and "pw@" not in record.exc_text
    assert "u:***@h/x" in record.exc_text


def test_secret_looking_keys_of_a_logged_dict_are_masked() -> None:
    """Scrapy logs the settings a crawl overrides, a task's AWS keys among them."""
    from pprint import pformat

    settings = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t",
        "BOT_NAME": "hydra",
        "EMPTY_PASSWORD": "",
    }
    record = logging.LogRecord(
        "scrapy.crawler", logging.INFO, __file__, 1, "Overridden settings:\n%(settings)s",
        ({"settings": pformat(settings)},), None,
    )  # fmt: skip
    RedactingFilter(Redactor()).filter(record)
    text = record.getMessage()
    assert "AKIDEXAMPLE" not in text and "aws-s3cr3t" not in text
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in text and "'BOT_NAME': 'hydra'" in text
    assert "'EMPTY_PASSWORD': ''" in text  # nothing to hide
    quoted = Redactor().text('{"api_token": "a\\"b", "name": "x"}')
    assert quoted == '{"api_token": "***", "name": "x"}'
