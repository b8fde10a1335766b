"""HYDRA_* settings: defaults, string forms, environment fallback, clear errors."""

from __future__ import annotations

import pytest
from scrapy.settings import Settings

from crawlers.config import HydraConfig, redact_url


def test_defaults_are_embedded() -> None:
    config = HydraConfig.from_settings(Settings())
    assert config.embedded
    assert config.batch_ok_statuses == [200]
    assert config.sinks == ["jsonl://output/prices.jsonl"]
    assert config.region == "default"


@pytest.mark.parametrize("raw", ["200,204", "[200, 204]", [200, 204]])
def test_status_lists_accept_strings(raw: object) -> None:
    config = HydraConfig.from_settings(Settings({"HYDRA_BATCH_OK_STATUSES": raw}))
    assert config.batch_ok_statuses == [200, 204]


def test_empty_sinks_disable_them() -> None:
    assert HydraConfig.from_settings(Settings({"HYDRA_SINKS": ""})).sinks == []


def test_environment_is_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_REDIS_URL", "redis://from-env:6379/0")
    monkeypatch.setenv("HYDRA_REGION", "eu")
    config = HydraConfig.from_settings(Settings({"HYDRA_REGION": "us"}))
    assert config.redis_url == "redis://from-env:6379/0"
    assert config.region == "us"  # the Scrapy setting wins over the environment


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(ValueError, match="HYDRA_LEASE_SECONDS"):
        HydraConfig.from_settings(Settings({"HYDRA_LEASE_SECONDS": 3}))


def test_invalid_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match="HYDRA_QUEUE_PREFETCH"):
        HydraConfig.from_settings(Settings({"HYDRA_QUEUE_PREFETCH": "0"}))


def test_redis_password_is_redacted() -> None:
    config = HydraConfig.from_settings(Settings({"HYDRA_REDIS_URL": "redis://:s3cret@h:1/0"}))
    assert config.redis_url_redacted == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
