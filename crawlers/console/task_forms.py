"""A task config as an HTML form and back: field by field, with each problem next to its field.

The common fields are inputs of their own; ``args``, ``settings``, ``retry``,
``expect`` and ``alerts`` are YAML text areas (as in a tasks file). Secrets
never reach the form: a plain secret shows as ``{secret: '***'}``, and saving
that mask keeps the stored value; they are set or unset one by one in the
secrets panel (:func:`with_secret`).
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import yaml
from pydantic import ValidationError

from crawlers.models.redaction import MASK
from crawlers.models.task_config import TaskConfig, _Yaml12Loader

TEXT_FIELDS = ("name", "description", "spider", "schedule", "timezone", "priority",
               "timeout_seconds", "max_parallel")  # fmt: skip
YAML_FIELDS = ("args", "settings", "retry", "expect", "alerts")
SCHEDULE_KINDS = ("cron", "every", "at", "trigger")
CHOICES = {
    "schedule_kind": SCHEDULE_KINDS,
    "concurrency": ("skip", "queue", "replace"),
    "missed": ("run_once", "skip"),
}
#: most characters of one form field (a YAML block of args included)
MAX_FIELD = 20_000
SECTIONS_WITH_SECRETS = ("args", "settings")


def blank_form() -> dict[str, str]:
    form = {name: "" for name in (*TEXT_FIELDS, *YAML_FIELDS)}
    form.update(schedule_kind="cron", timezone="UTC", priority="50", max_parallel="1",
                concurrency="skip", missed="run_once", paused="")  # fmt: skip
    return form


def form_of(task: TaskConfig) -> dict[str, str]:
    """The form showing ``task`` (secrets masked)."""
    data = task.public()
    schedule = data["schedule"]
    kind = next(key for key in SCHEDULE_KINDS if key in schedule)
    form = blank_form()
    form.update(
        name=task.name, description=task.description, spider=task.spider, schedule_kind=kind,
        schedule=str(schedule[kind]), timezone=str(schedule.get("timezone", "UTC")),
        priority=str(task.priority), max_parallel=str(task.max_parallel),
        timeout_seconds="" if task.timeout_seconds is None else f"{task.timeout_seconds:g}",
        concurrency=task.concurrency, missed=task.missed, paused="on" if task.paused else "",
    )  # fmt: skip
    for name in YAML_FIELDS:
        value = data[name]
        if name in ("retry", "expect"):
            value = {k: v for k, v in value.items() if v not in (None, [])}
        form[name] = yaml.safe_dump(value, sort_keys=False, allow_unicode=True) if value else ""
    return form


def task_from_form(
    form: dict[str, str], name: str, existing: TaskConfig | None
) -> tuple[TaskConfig | None, dict[str, str]]:
    """The config the form describes, or the problems by form field. A masked secret
    keeps ``existing``'s value."""
    errors: dict[str, str] = {}
    data: dict[str, Any] = {"name": name, "description": form.get("description", "")}
    data["spider"] = form.get("spider", "").strip()
    kind = form.get("schedule_kind", "cron")
    value: Any = form.get("schedule", "").strip()
    if kind == "trigger":
        value = "external"
    schedule: dict[str, Any] = {kind: value}
    if kind == "cron":
        schedule["timezone"] = form.get("timezone", "UTC").strip() or "UTC"
    data["schedule"] = schedule
    for field in ("priority", "max_parallel", "timeout_seconds"):
        text = form.get(field, "").strip()
        if text:
            data[field] = text
    for field in ("concurrency", "missed"):
        if form.get(field):
            data[field] = form[field]
    for field in YAML_FIELDS:
        text = form.get(field, "")
        if not text.strip():
            continue
        try:
            data[field] = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            errors[field] = f"not valid YAML (line {mark.line + 1})" if mark else "not valid YAML"
    if existing is not None:
        errors.update(_keep_masked_secrets(data, existing))
    try:  # the other fields are checked too, so that every problem shows at once
        task = TaskConfig.model_validate(data)
    except ValidationError as exc:
        return None, {**field_errors(exc), **errors}
    return (None, errors) if errors else (task, {})


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Pydantic's problems by the form field they belong to (never quoting the input)."""
    errors: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        location = [str(part) for part in error["loc"]]
        field = location[0] if location else "name"
        if field == "schedule" and "timezone" in location:
            field = "timezone"
        if field not in (*TEXT_FIELDS, *YAML_FIELDS, *CHOICES):
            field = "schedule" if field == "schedule" else "name"
        where = ".".join(location[1:])
        message = error["msg"] + (f" ({where})" if where and field in YAML_FIELDS else "")
        errors[field] = f"{errors[field]}; {message}" if field in errors else message
    return errors


def _masked(value: Any) -> bool:
    """A value as the form shows a secret: ``{secret: '***'}``, ``***``, ``u:***@``."""
    if value == {"secret": MASK}:
        return True
    return isinstance(value, str) and (value == MASK or f":{MASK}@" in value or f"={MASK}" in value)


def _keep_masked_secrets(data: dict[str, Any], existing: TaskConfig) -> dict[str, str]:
    """Put the stored secrets back where the form sent exactly what it showed for the same
    key (or the same whole alert); a masked value anywhere else is a problem (it would be
    saved as the secret), returned by field."""
    stored, shown = existing.storage_dump(), existing.public()
    problems: dict[str, str] = {}
    for section in SECTIONS_WITH_SECRETS:
        given = data.get(section)
        if not isinstance(given, dict):
            continue
        for key, value in given.items():
            if key in shown[section] and value == shown[section][key]:
                given[key] = stored[section][key]
            elif _masked(value):
                problems[section] = f"{key}: a masked value that is not stored under this name "
                problems[section] += "(set the secret in the secrets panel)"
    given_alerts = data.get("alerts")
    if isinstance(given_alerts, list):
        for index, alert in enumerate(given_alerts):
            if index < len(shown["alerts"]) and alert == shown["alerts"][index]:
                given_alerts[index] = stored["alerts"][index]  # the whole alert, unchanged
            elif isinstance(alert, dict) and _masked(alert.get("webhook")):
                problems["alerts"] = f"alert {index + 1}: a changed alert needs its webhook again"
    return problems


def secret_paths(task: TaskConfig) -> list[str]:
    """``args.token``, ``settings.X``, ``alerts.0.webhook``: where the task holds secrets."""
    return sorted(task.split_secrets()[1])


def with_secret(task: TaskConfig, section: str, key: str, value: str | None) -> TaskConfig:
    """``task`` with ``section.key`` set to a plain secret, or removed (``value`` None)."""
    if section not in SECTIONS_WITH_SECRETS:
        raise ValueError("secrets are set in args or settings")
    data = task.storage_dump()
    if value is None:
        data[section].pop(key, None)
    else:
        data[section][key] = {"secret": value}
    return TaskConfig.model_validate(data)


def version_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, str]]:
    """A unified diff of two stored versions (public parts: no secret), as (kind, line)."""

    def lines(config: dict[str, Any] | None) -> list[str]:
        if config is None:
            return []
        return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    diff = difflib.unified_diff(lines(old), lines(new), "before", "after", lineterm="", n=2)
    out = []
    for line in diff:
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        if line.startswith(("+++", "---")):
            kind = "file"
        out.append((kind, line))
    return out
