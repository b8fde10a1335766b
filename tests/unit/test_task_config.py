"""Task configs: what validates, what is refused (naming the field), and secrets kept secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from crawlers.models import SCHEMAS, validation_error_text
from crawlers.models.task_config import (
    CronSchedule,
    EnvRef,
    ExternalSchedule,
    IntervalSchedule,
    MissingSecretError,
    OneOffSchedule,
    SecretValue,
    TaskConfig,
    TaskFileError,
    WebhookAlert,
    load_task_file,
)

SECRET = "hunter2-do-not-print"
#: the issue's example, plus a secret, an env reference and a secret webhook
ISSUE_EXAMPLE = f"""
tasks:
  - name: prices-hourly
    spider: prices
    args: {{ids: "1,2,3", token: {{secret: "{SECRET}"}}, user: {{env: SHOP_USER}}}}
    settings: {{HYDRA_SINKS: "jsonl:///data/prices.jsonl", CONCURRENT_REQUESTS: 4}}
    schedule: {{cron: "0 * * * *", timezone: "Europe/Berlin"}}
    priority: 5
    retry: {{max_retries: 2, backoff_seconds: 10}}
    expect: {{min_items: 1}}
    alerts:
      - webhook: "https://hooks.example/x"
        on: [failure, consecutive_failures]
      - email: "ops@example.com"
  - name: nightly
    spider: fetch
    schedule: {{every: 1d}}
    alerts: [{{webhook: {{secret: "https://hooks.example/{SECRET}"}}}}]
  - name: launch
    spider: prices
    schedule: {{at: "2026-12-01T08:00:00Z"}}
  - name: on-demand
    spider: prices
    schedule: {{trigger: external}}
"""


def config(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "spider": "prices", "schedule": {"every": 60}, **fields}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        TaskConfig.model_validate(data)
    return validation_error_text(caught.value)


def test_the_issue_example_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(ISSUE_EXAMPLE)
    hourly, nightly, launch, on_demand = load_task_file(path)
    assert hourly.schedule == CronSchedule(cron="0 * * * *", timezone="Europe/Berlin")
    assert hourly.priority == 5
    assert hourly.retry.max_retries == 2
    assert hourly.retry.backoff_factor == 2  # defaults fill the rest of the policy
    assert hourly.expect.min_items == 1
    assert hourly.settings["CONCURRENT_REQUESTS"] == 4
    assert hourly.args["user"] == EnvRef(env="SHOP_USER")
    webhook = hourly.alerts[0]
    assert isinstance(webhook, WebhookAlert)
    assert webhook.on == ["failure", "consecutive_failures"]  # YAML 1.1 would read `on` as True
    assert hourly.alerts[1].on == ["failure"]
    assert (hourly.missed, hourly.concurrency, hourly.max_parallel) == ("run_once", "skip", 1)
    assert nightly.schedule == IntervalSchedule(every=86400)
    assert isinstance(launch.schedule, OneOffSchedule)
    assert launch.schedule.at.isoformat() == "2026-12-01T08:00:00+00:00"
    assert on_demand.schedule == ExternalSchedule(trigger="external")


def test_the_same_tasks_load_from_json(tmp_path: Path) -> None:
    yaml_path = tmp_path / "tasks.yml"
    yaml_path.write_text(ISSUE_EXAMPLE)
    tasks = load_task_file(yaml_path)
    json_path = tmp_path / "tasks.json"
    json_path.write_text(json.dumps({"tasks": [task.storage_dump() for task in tasks]}))
    assert load_task_file(json_path) == tasks


def test_the_json_schema_accepts_the_example(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(ISSUE_EXAMPLE)
    schema = SCHEMAS["task_config"].json_schema()
    for task in load_task_file(path):
        jsonschema.validate(task.storage_dump(), schema)
    for every in ("30s", "1h30m", 45):
        jsonschema.validate(config(schedule={"every": every}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config(schedule={"every": "5x"}), schema)


@pytest.mark.parametrize(
    ("every", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (45, 45), ("90", 90)],
)
def test_every_takes_units_or_seconds(every: str | int, seconds: float) -> None:
    schedule = TaskConfig.model_validate(config(schedule={"every": every})).schedule
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.every == seconds


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron.cron"),
        ({"schedule": {"cron": "every day"}}, "schedule.cron.cron"),
        ({"schedule": {"cron": "0 0 * * * *"}}, "schedule.cron.cron"),  # no seconds field
        ({"schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron.cron"),  # never fires
        ({"schedule": {"cron": "0 * * * *", "timezone": "Mars/Olympus"}}, "schedule.cron.timezone"),
        ({"schedule": {"cron": "0 * * * *", "timezone": "../etc/passwd"}}, "timezone"),
        ({"schedule": {"cron": "0 * * * *", "tz": "UTC"}}, "schedule.cron.tz"),
        ({"schedule": {"every": "5x"}}, "schedule.every.every"),
        ({"schedule": {"every": "m"}}, "schedule.every.every"),
        ({"schedule": {"every": 0.5}}, "schedule.every.every"),
        ({"schedule": {"every": True}}, "schedule.every.every"),
        ({"schedule": {"every": "4000d"}}, "schedule.every.every"),
        ({"schedule": {"every": "inf"}}, "schedule.every.every"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds"),
        ({"schedule": {"at": "2026-12-01T08:00:00"}}, "schedule.at.at"),  # naive: which zone?
        ({"schedule": {"trigger": "webhook"}}, "schedule.trigger.trigger"),
        ({"schedule": {"cron": "0 * * * *", "every": 60}}, "schedule"),
        ({"schedule": {}}, "schedule"),
        ({"name": "Prices Hourly"}, "name"),
        ({"spider": ""}, "spider"),
        ({"priority": 101}, "priority"),
        ({"missed": "all"}, "missed"),
        ({"concurrency": "parallel"}, "concurrency"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"retry": {"max_retries": -1}}, "retry.max_retries"),
        ({"retry": {"backoff_seconds": 60, "max_backoff_seconds": 10}}, "retry"),
        ({"retry": {"jitter": 1.5}}, "retry.jitter"),
        ({"expect": {"min_items": -1}}, "expect.min_items"),
        ({"args": {"ids": 123}}, "args.ids"),
        ({"args": {"bad-name": "x"}}, "args.bad-name"),
        ({"args": {"user": {"env": "1BAD"}}}, "args.user.env.env"),
        ({"settings": {"X": [1, 2]}}, "settings.X"),
        ({"alerts": [{"webhook": "ftp://hooks.example/x"}]}, "alerts.0.webhook.webhook"),
        ({"alerts": [{"email": "ops"}]}, "alerts.0.email.email"),
        ({"alerts": [{"email": "ops@example.com", "on": ["bored"]}]}, "alerts.0.email.on.0"),
        ({"alerts": [{"email": "ops@example.com", "on": []}]}, "alerts.0.email.on"),
        ({"alerts": [{"sms": "+49"}]}, "alerts.0"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_configs_name_the_field(fields: dict[str, Any], named: str) -> None:
    assert f"{named}" in error_of(config(**fields))


def test_macros_and_spacing_are_accepted() -> None:
    for cron in ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", " 0  6 * * 1-5 "):
        schedule = TaskConfig.model_validate(config(schedule={"cron": cron})).schedule
        assert isinstance(schedule, CronSchedule)
        assert len(schedule.fields.split()) == 5
    assert CronSchedule(cron="@HOURLY").fields == "0 * * * *"


def test_task_names_are_unique_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": [config(name="a"), config(name="b"), config(name="a")]}))
    with pytest.raises(TaskFileError, match=r"task names must be unique: a$"):
        load_task_file(path)


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    fields = {
        "args": {"token": {"secret": SECRET, "note": SECRET}, "ids": {"secret": 5}},
        "settings": {"PASSWORD": {"secret": SECRET}, "BAD": [SECRET]},
        "alerts": [{"webhook": {"secret": f"ftp://{SECRET}"}}, {"webhook": f"gopher://{SECRET}"}],
        "schedule": {"cron": SECRET},
    }
    text = error_of(config(**fields))
    assert "args.token.secret.note" in text
    assert "alerts.0.webhook.webhook" in text
    assert SECRET not in text
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": [config(**fields)]}))
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (  # unclosed
            f'tasks:\n  - name: t\n    args: {{token: {{secret: "{SECRET}"}}\n',
            "line 4, column 1: expected ',' or '}', but got '<stream end>'",
        ),
        (  # undefined alias
            f"tasks:\n  - name: t\n    args: *{SECRET}\n",
            "line 3, column 11: found undefined alias '...'",
        ),
        (  # a tab
            f"tasks:\n  - name: t\n\targs: {SECRET}\n",
            "line 3, column 1: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_yaml_errors_give_the_position_not_the_text(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    with pytest.raises(TaskFileError) as caught:
        load_task_file(path)
    assert str(caught.value) == f"{path}: invalid YAML at {said}"
    assert "hunter" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("tasks.json", '{"tasks": [', "invalid JSON at line 1, column 12"),
        ("tasks.json", "[]", "expected a mapping with a 'tasks' list"),
        ("tasks.yaml", "", "expected a mapping with a 'tasks' list"),
        ("tasks.toml", "tasks = []", "ends in .yaml, .yml or .json"),
        ("tasks.yaml", "tasks: []\nversion: 2\n", "version: Extra inputs are not permitted"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TaskFileError, match=message):
        load_task_file(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="cannot read: FileNotFoundError"):
        load_task_file(tmp_path / "absent.yaml")


def test_yes_and_on_stay_strings_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n  - {name: t, spider: s, schedule: {every: 60}, args: {mode: yes, x: on},\n"
        "     paused: true, settings: {A: no, B: false}}\n"
    )
    (task,) = load_task_file(path)
    assert task.args == {"mode": "yes", "x": "on"}
    assert task.settings == {"A": "no", "B": False}
    assert task.paused is True


def secretive() -> TaskConfig:
    return TaskConfig.model_validate(
        config(
            args={"ids": "1,2", "token": {"secret": SECRET}, "user": {"env": "SHOP_USER"}},
            settings={
                "PROXY_PASSWORD": SECRET,
                "DOWNLOAD_DELAY": 0.5,
                "KEY": {"secret": SECRET},
                "HYDRA_SINKS": f"s3://key:{SECRET}@bucket/prices/",
            },
            alerts=[
                {"webhook": f"https://u:{SECRET}@hooks.example/x?token={SECRET}&a=1"},
                {"webhook": {"secret": f"https://hooks.example/{SECRET}"}},
                {"webhook": {"env": "HOOK_URL"}},
                {"email": "ops@example.com"},
            ],
        )
    )


def test_public_never_returns_secrets_and_keeps_references() -> None:
    task = secretive()
    public = task.public()
    assert SECRET not in json.dumps(public)
    assert public["args"] == {
        "ids": "1,2",
        "token": {"secret": "***"},
        "user": {"env": "SHOP_USER"},
    }
    # a password written in plain text is masked by its key, a URL's credentials by redaction
    assert public["settings"] == {
        "PROXY_PASSWORD": "***",
        "DOWNLOAD_DELAY": 0.5,
        "KEY": {"secret": "***"},
        "HYDRA_SINKS": "s3://key:***@bucket/prices/",
    }
    assert public["alerts"][0]["webhook"] == "https://u:***@hooks.example/x?token=***&a=1"
    assert public["alerts"][1]["webhook"] == {"secret": "***"}
    assert public["alerts"][2]["webhook"] == {"env": "HOOK_URL"}
    assert task.model_dump()["args"]["token"] == {"secret": "***"}


def test_written_secrets_stay_out_of_repr_and_dumps() -> None:
    task = TaskConfig.model_validate(
        config(
            args={"token": {"secret": SECRET}},
            settings={"KEY": {"secret": SECRET}},
            alerts=[{"webhook": {"secret": f"https://hooks.example/{SECRET}"}}],
        )
    )
    for dumped in (repr(task), str(task), task.model_dump_json(), json.dumps(task.model_dump())):
        assert SECRET not in dumped


def test_storage_dump_and_split_secrets_round_trip() -> None:
    task = secretive()
    assert TaskConfig.model_validate(task.storage_dump()) == task
    public, secrets = task.split_secrets()
    assert SECRET not in json.dumps(public)
    assert set(secrets) == {
        "args.token",
        "settings.PROXY_PASSWORD",
        "settings.KEY",
        "settings.HYDRA_SINKS",
        "alerts.0.webhook",
        "alerts.1.webhook",
    }
    assert TaskConfig.join_secrets(public, secrets) == task
    with pytest.raises(ValueError, match=r"the secret args\.absent has no place") as caught:
        TaskConfig.join_secrets(public, {"args.absent": SECRET})
    assert SECRET not in str(caught.value)
    for path in ("alerts.9.webhook", "alerts.x.webhook", "schedule.every", "nowhere"):
        with pytest.raises(ValueError, match="has no place"):
            TaskConfig.join_secrets(public, {path: SECRET})


def test_secrets_resolve_only_for_launching() -> None:
    task = secretive()
    environ = {"SHOP_USER": "alice"}
    assert task.spider_args(environ) == {"ids": "1,2", "token": SECRET, "user": "alice"}
    assert task.spider_settings(environ)["KEY"] == SECRET
    assert task.spider_settings(environ)["DOWNLOAD_DELAY"] == 0.5
    with pytest.raises(MissingSecretError, match=r"args\.user: environment variable SHOP_USER"):
        task.spider_args({})


def test_secret_values_are_write_only_models() -> None:
    value = SecretValue.model_validate({"secret": SECRET})
    assert SECRET not in repr(value)
    assert value.model_dump() == {"secret": "***"}
    assert value.model_dump(context={"reveal_secrets": True}) == {"secret": SECRET}


def test_expectations_name_what_was_missed() -> None:
    task = TaskConfig.model_validate(config(expect={"min_items": 1, "max_errors": 0}))
    assert task.expect.violations({"item_scraped_count": 3, "finish_reason": "finished"}) == []
    problems = task.expect.violations({"log_count/ERROR": 2, "finish_reason": "shutdown"})
    assert problems == [
        "0 items, expected at least 1",
        "2 errors logged, expected at most 0",
        "finish_reason 'shutdown', expected one of ['finished']",
    ]
    bounded = TaskConfig.model_validate(config(expect={"max_items": 1, "max_dropped_items": 0}))
    assert bounded.expect.violations(
        {"item_scraped_count": 2, "item_dropped_count": 1, "finish_reason": "finished"}
    ) == ["2 items, expected at most 1", "1 items dropped, expected at most 0"]
