"""HYDRA_* settings: defaults, string forms, environment fallback, registries, clear errors."""

from __future__ import annotations

import logging

import pytest
from scrapy.settings import Settings

from crawlers.config import HydraConfig, HydraConfigError, project_path, project_root


def test_defaults_are_embedded() -> None:
    config = HydraConfig.from_settings(Settings())
    assert config.embedded
    assert config.batch_ok_statuses == [200]
    assert config.sinks == ["jsonl://output/prices.jsonl"]
    assert config.region == "default"
    assert config.allowed_schemes == ["http", "https"]


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


def test_registries_merge_with_their_base() -> None:
    settings = Settings(
        {"HYDRA_TASK_KINDS": '{"fetch": "x.Fetch"}', "HYDRA_SINK_SCHEMES": {"jsonl": None}}
    )
    config = HydraConfig.from_settings(settings)
    assert config.registry("task_kinds") == {
        "price_batch": "crawlers.tasks.price_batches.PriceBatchKind",
        "fetch_task": "crawlers.tasks.fetch_tasks.FetchTaskKind",
        "fetch": "x.Fetch",
    }
    # None removes a base entry
    assert config.registry("sink_schemes") == {
        "bigquery": "crawlers.sinks.bigquery.BigQuerySink",
        "stream": "crawlers.sinks.stream.StreamSink",
        "clickhouse": "crawlers.sinks.clickhouse.ClickHouseSink",
    }


def test_unknown_setting_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(HydraConfigError) as caught:
        HydraConfig.from_settings(Settings({"HYDRA_QUEUE_PREFTCH": 3}))
    assert caught.value.problems == [
        "HYDRA_QUEUE_PREFTCH: unknown setting (did you mean HYDRA_QUEUE_PREFETCH?)"
    ]


def test_unknown_environment_variable_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HYDRA_IDLE_CLOSE_SECOND", "5")
    with caplog.at_level(logging.WARNING):
        HydraConfig.from_settings(Settings())
    assert "HYDRA_IDLE_CLOSE_SECOND is not a Hydra setting" in caplog.text
    assert "HYDRA_IDLE_CLOSE_SECONDS" in caplog.text


def test_invalid_values_give_one_line_each_without_secrets() -> None:
    settings = Settings(
        {
            "HYDRA_QUEUE_PREFETCH": "0",
            "HYDRA_RETRY_DELAY_SECONDS": "soon",
            "HYDRA_REDIS_URL": "redis://:hunter2@h:1/0",
            "HYDRA_QUEUE_LEASE_SECONDS": "-1",
        }
    )
    with pytest.raises(HydraConfigError) as caught:
        HydraConfig.from_settings(settings)
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("HYDRA_QUEUE_LEASE_SECONDS='-1': ")
    assert any(p.startswith("HYDRA_QUEUE_PREFETCH='0': ") and "1" in p for p in problems)
    assert any(p.startswith("HYDRA_RETRY_DELAY_SECONDS='soon'") for p in problems)
    assert "hunter2" not in str(caught.value)


def test_redis_password_is_redacted() -> None:
    config = HydraConfig.from_settings(Settings({"HYDRA_REDIS_URL": "redis://:s3cret@h:1/0"}))
    assert config.redis_url_redacted == "redis://:***@h:1/0"


def test_relative_paths_are_resolved_against_the_project() -> None:
    assert (project_root() / "scrapy.cfg").exists()
    assert project_path("output/dl.jsonl") == project_root() / "output/dl.jsonl"
    assert str(project_path("/abs/dl.jsonl")) == "/abs/dl.jsonl"
