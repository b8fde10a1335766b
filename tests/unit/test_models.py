"""The message contracts: what is accepted, what is rejected, and secrets kept secret."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from crawlers.models import FETCH_TASK, DeadLetterEntry, PriceBatch, validation_error_text
from crawlers.models.redaction import redact_payload


def test_price_batch_defaults() -> None:
    batch = PriceBatch.model_validate_json('{"run_id": "r", "batch_id": "b", "ids": ["1"]}')
    assert batch.attempt == 0
    assert batch.url_template is None
    assert batch.region is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"run_id": "r", "batch_id": "b", "ids": []}, "ids"),
        ({"run_id": "r", "batch_id": "b", "ids": [" "]}, "ids"),
        ({"run_id": "r", "ids": ["1"]}, "batch_id"),
        ({"run_id": "r", "batch_id": "b", "ids": ["1"], "attempt": -1}, "attempt"),
        ({"run_id": "r", "batch_id": "b", "ids": ["1"], "url_template": "http://x/"}, "url"),
        ({"run_id": "r", "batch_id": "b", "ids": ["1"], "colour": "red"}, "colour"),
    ],
)
def test_price_batch_rejects(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PriceBatch.model_validate_json(json.dumps(payload))
    assert field in validation_error_text(caught.value)


def test_remainder_starts_at_the_failed_id_and_counts_the_attempt() -> None:
    batch = PriceBatch(run_id="r", batch_id="b", ids=["1", "2", "3"], region="eu", attempt=1)
    rest = batch.remainder(1, "HTTP 429")
    assert rest.ids == ["2", "3"]
    assert rest.attempt == 2
    assert rest.reason == "HTTP 429"
    assert rest.region is None
    assert batch.remainder(1, "shutdown", next_attempt=False).attempt == 1


FTP_TASK = {
    "job_id": "job_1",
    "channel_id": "001",
    "source_type": "ftp",
    "is_new": False,
    "heal_mode": False,
    "config": {"host": "ftp.example.com", "username": "u", "password": "hunter2", "x": 1},
}


def test_fetch_task_variants_are_typed_by_source_type() -> None:
    task = FETCH_TASK.validate_json(json.dumps(FTP_TASK))
    assert type(task).__name__ == "FtpFetchTask"
    assert task.config.password.get_secret_value() == "hunter2"
    web = dict(FTP_TASK, source_type="api", config={"url": "https://example.com/data"})
    assert type(FETCH_TASK.validate_json(json.dumps(web))).__name__ == "WebFetchTask"


def test_fetch_task_secrets_never_print() -> None:
    task = FETCH_TASK.validate_json(json.dumps(FTP_TASK))
    assert "hunter2" not in repr(task)
    assert "hunter2" not in task.model_dump_json()
    assert task.config.model_extra == {"x": 1}  # "other_optional_fields" are kept


@pytest.mark.parametrize(
    "change",
    [
        {"source_type": "gopher"},
        {"is_new": True, "heal_mode": True},
        {"config": {"host": ""}},
        {"source_type": "s3"},  # an FTP config is not an S3 config
    ],
)
def test_fetch_task_rejects(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        FETCH_TASK.validate_json(json.dumps(dict(FTP_TASK, **change)))
    assert "hunter2" not in validation_error_text(caught.value)


def test_dead_letter_masks_secrets_but_keeps_clean_payloads_raw() -> None:
    raw = json.dumps(dict(FTP_TASK, source_type="gopher"))
    entry = DeadLetterEntry.build(reason="invalid_message", error="e", source="q", payload=raw)
    assert "hunter2" not in entry.model_dump_json()
    assert json.loads(entry.payload)["config"]["username"] == "u"
    assert redact_payload('{"ids": [1]}  ') == '{"ids": [1]}  '
    assert redact_payload("not json {") == "not json {"
