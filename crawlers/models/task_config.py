"""Seed 001's task config: what the scheduler runs, when, and what it does on failure.

Configs come from the API or a YAML/JSON tasks file (``load_task_file``). Secrets
are write-only: a value in ``args``, ``settings`` or an alert's ``webhook`` may be
``{"secret": "plain"}`` (kept as ``SecretStr``) or ``{"env": "VAR"}`` (a reference
resolved only when a job is launched). Every dump masks plain secrets as ``***``
unless the caller asks for them explicitly (``storage_dump``, for the encrypted
store); ``public()`` is the API's view and also masks secret-looking keys and
URL credentials that were written as plain text. Pure pydantic: no Scrapy.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import CroniterBadDateError, croniter
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    SerializationInfo,
    StringConstraints,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from crawlers.models.redaction import DEFAULT_REDACTOR, MASK, is_secret_key, redact_url
from crawlers.models.validation import validation_error_text

#: ``model_dump(context={REVEAL_SECRETS: True})`` keeps plain secrets (storage only)
REVEAL_SECRETS = "reveal_secrets"

Missed = Literal["run_once", "skip"]
Concurrency = Literal["skip", "queue", "replace"]
AlertEvent = Literal["failure", "consecutive_failures", "timeout", "zero_items"]

TaskName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")]
ArgName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
SettingName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SecretValue(_Strict):
    """A plain secret (``{"secret": "..."}``): dumped as ``***`` unless revealed."""

    secret: SecretStr

    @field_serializer("secret")
    def _masked(self, value: SecretStr, info: SerializationInfo) -> str:
        context = info.context
        if isinstance(context, Mapping) and context.get(REVEAL_SECRETS) is True:
            return value.get_secret_value()
        return MASK


class EnvRef(_Strict):
    """A secret kept in the launcher's environment (``{"env": "VAR"}``): only the name is stored."""

    env: EnvName


class MissingSecretError(LookupError):
    """An ``{"env": ...}`` reference whose variable is not set where the job is launched."""


def _value_kind(value: Any) -> str:
    if isinstance(value, SecretValue) or (isinstance(value, dict) and "secret" in value):
        return "secret"
    if isinstance(value, EnvRef) or (isinstance(value, dict) and "env" in value):
        return "env"
    return "plain"


#: an ``args`` value: text, ``{"secret": ...}`` or ``{"env": ...}``
ArgValue = Annotated[
    Annotated[str, Tag("plain")]
    | Annotated[SecretValue, Tag("secret")]
    | Annotated[EnvRef, Tag("env")],
    Discriminator(_value_kind),
]
#: a ``settings`` value: a scalar, ``{"secret": ...}`` or ``{"env": ...}``
SettingValue = Annotated[
    Annotated[str | int | float | bool, Tag("plain")]
    | Annotated[SecretValue, Tag("secret")]
    | Annotated[EnvRef, Tag("env")],
    Discriminator(_value_kind),
]


def _resolve(
    value: str | int | float | bool | SecretValue | EnvRef, where: str, environ: Mapping[str, str]
) -> str | int | float | bool:
    if isinstance(value, SecretValue):
        return value.secret.get_secret_value()
    if isinstance(value, EnvRef):
        if value.env not in environ:
            raise MissingSecretError(f"{where}: environment variable {value.env} is not set")
        return environ[value.env]
    return value


# --- schedules --------------------------------------------------------------------

#: cron macros croniter accepts, as the five fields the DST rule inspects
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_REFERENCE = datetime(2000, 1, 1)  # naive: croniter matches wall-clock times


class CronSchedule(_Strict):
    """A five-field cron expression (or ``@daily``-style macro) read in ``timezone``."""

    cron: str = Field(description="minute hour day-of-month month day-of-week, or @hourly etc.")
    timezone: str = Field("UTC", description="IANA time zone the expression is read in")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        expression = " ".join(value.split())
        fields = CRON_MACROS.get(expression.lower(), expression)
        if len(fields.split()) != 5:
            raise ValueError(
                "a cron expression has 5 fields (minute hour day month weekday) "
                "or is a macro such as @daily"
            )
        if not croniter.is_valid(fields):
            raise ValueError("not a valid cron expression")
        try:
            croniter(fields, _CRON_REFERENCE).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError("the cron expression never fires") from None
        return expression

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as Europe/Berlin)") from None
        return value

    @property
    def fields(self) -> str:
        """The five fields, macros expanded."""
        return CRON_MACROS.get(self.cron.lower(), self.cron)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


#: ten years: longer is a typo, and would overflow ``timedelta`` arithmetic near year 9999
MAX_INTERVAL_SECONDS = 3650 * 86400
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> object:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):  # bool is an int: ``every: true`` is a mistake
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 2h, 1d")
    if not isinstance(value, str):
        return value  # numbers: the float field validates them
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    if not text or _DURATION.sub("", text):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 2h, 1d")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(text))


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 1, "maximum": MAX_INTERVAL_SECONDS},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?[smhdSMHD])+)\s*$"},
    ],
    "description": "seconds, or a duration such as 30s, 5m, 2h, 1d, 1h30m",
}


class IntervalSchedule(_Strict):
    """Every ``every`` seconds, at ``anchor + k * every`` (k >= 0).

    The default anchor is the Unix epoch, so every replica computes the same fire
    instants and intervals that divide a day land on round times (5m at :00, :05...).
    """

    every: Annotated[
        float,
        BeforeValidator(parse_duration),
        Field(ge=1, le=MAX_INTERVAL_SECONDS),
        WithJsonSchema(_DURATION_SCHEMA),
    ]
    anchor: AwareDatetime | None = Field(None, description="the first fire; default the epoch")

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.every)


class OneOffSchedule(_Strict):
    """Once, at ``at`` (an instant: the time zone is required)."""

    at: AwareDatetime


class ExternalSchedule(_Strict):
    """Never by the clock: only ``POST /tasks/{name}/trigger`` or the trigger stream."""

    trigger: Literal["external"]


_SCHEDULE_KEYS = ("cron", "every", "at", "trigger")


def _schedule_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        present = [key for key in _SCHEDULE_KEYS if key in value]
    else:
        present = [key for key in _SCHEDULE_KEYS if hasattr(value, key)]
    return present[0] if len(present) == 1 else None


Schedule = Annotated[
    Annotated[CronSchedule, Tag("cron")]
    | Annotated[IntervalSchedule, Tag("every")]
    | Annotated[OneOffSchedule, Tag("at")]
    | Annotated[ExternalSchedule, Tag("trigger")],
    Discriminator(
        _schedule_kind,
        custom_error_type="schedule_kind",
        custom_error_message="a schedule has exactly one of cron, every, at or trigger",
    ),
]


# --- policies -----------------------------------------------------------------------


class RetryPolicy(_Strict):
    """Retries of a failed job: ``backoff_seconds * backoff_factor**(n-1)``, capped, jittered."""

    max_retries: int = Field(0, ge=0, le=100)
    backoff_seconds: float = Field(10, ge=0)
    backoff_factor: float = Field(2, ge=1)
    max_backoff_seconds: float = Field(3600, ge=0)
    jitter: float = Field(0.1, ge=0, le=1, description="up to this fraction shorter, at random")

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError("max_backoff_seconds is less than backoff_seconds")
        return self


class Expectations(_Strict):
    """Success criteria checked on a job's final Scrapy stats; a miss fails the job."""

    min_items: int | None = Field(None, ge=0)
    max_items: int | None = Field(None, ge=0)
    max_errors: int | None = Field(None, ge=0, description="log_count/ERROR at most")
    max_dropped_items: int | None = Field(None, ge=0)
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["finished"], min_length=1, description="allowed finish_reason"
    )

    def violations(self, stats: Mapping[str, object]) -> list[str]:
        """Why ``stats`` miss these criteria (empty: the job succeeded)."""

        def count(key: str) -> int:
            value = stats.get(key, 0)
            return value if isinstance(value, int) else 0

        problems = []
        items = count("item_scraped_count")
        if self.min_items is not None and items < self.min_items:
            problems.append(f"{items} items, expected at least {self.min_items}")
        if self.max_items is not None and items > self.max_items:
            problems.append(f"{items} items, expected at most {self.max_items}")
        errors = count("log_count/ERROR")
        if self.max_errors is not None and errors > self.max_errors:
            problems.append(f"{errors} errors logged, expected at most {self.max_errors}")
        dropped = count("item_dropped_count")
        if self.max_dropped_items is not None and dropped > self.max_dropped_items:
            problems.append(f"{dropped} items dropped, expected at most {self.max_dropped_items}")
        reason = stats.get("finish_reason")
        if reason not in self.finish_reasons:
            problems.append(f"finish_reason {reason!r}, expected one of {self.finish_reasons}")
        return problems


def _public_value(key: str, value: object) -> object:
    if not isinstance(value, str):  # a number, or a {"secret": "***"} / {"env": ...} dict
        return value
    return MASK if is_secret_key(key) else DEFAULT_REDACTOR.text(value)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_ON_FAILURE: list[AlertEvent] = ["failure"]


class _AlertBase(_Strict):
    on: list[AlertEvent] = Field(default_factory=lambda: _ON_FAILURE.copy(), min_length=1)
    consecutive: int = Field(3, ge=1, description="failures in a row for consecutive_failures")


class WebhookAlert(_AlertBase):
    """POSTs a JSON alert; the URL may be a secret (chat hooks carry tokens in the path)."""

    webhook: str | SecretValue | EnvRef

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | SecretValue | EnvRef) -> str | SecretValue | EnvRef:
        url = value.secret.get_secret_value() if isinstance(value, SecretValue) else value
        if isinstance(url, str) and not _is_http_url(url):
            raise ValueError("a webhook is an http:// or https:// URL")  # never the URL itself
        return value


class EmailAlert(_AlertBase):
    """Mails the alert through the scheduler's SMTP settings."""

    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]


def _alert_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        present = [key for key in ("webhook", "email") if key in value]
    else:
        present = [key for key in ("webhook", "email") if hasattr(value, key)]
    return present[0] if len(present) == 1 else None


AlertRule = Annotated[
    Annotated[WebhookAlert, Tag("webhook")] | Annotated[EmailAlert, Tag("email")],
    Discriminator(
        _alert_kind,
        custom_error_type="alert_kind",
        custom_error_message="an alert has exactly one of webhook or email",
    ),
]


# --- the config ---------------------------------------------------------------------


class TaskConfig(_Strict):
    """One scheduled task: a spider with arguments and settings, its schedule and policies."""

    name: TaskName = Field(description="unique slug: lower-case letters, digits, - and _")
    description: str = Field("", max_length=1000)
    spider: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    args: dict[ArgName, ArgValue] = Field(default_factory=dict, description="spider -a arguments")
    settings: dict[SettingName, SettingValue] = Field(default_factory=dict)
    schedule: Schedule
    missed: Missed = Field("run_once", description="fires missed while the scheduler was down")
    priority: int = Field(50, ge=0, le=100, description="higher is dispatched first")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(None, gt=0)
    concurrency: Concurrency = Field("skip", description="a fire while max_parallel jobs run")
    max_parallel: int = Field(1, ge=1, le=1000)
    expect: Expectations = Field(default_factory=Expectations)
    alerts: list[AlertRule] = Field(default_factory=list)
    paused: bool = False

    def public(self) -> dict[str, Any]:
        """The API's view: plain secrets ``{"secret": "***"}``, env references as written; text
        written in plain under a secret-looking key, and credentials in URLs, masked too."""
        data = self.model_dump(mode="json")
        for section in ("args", "settings"):
            data[section] = {key: _public_value(key, value) for key, value in data[section].items()}
        for alert in data["alerts"]:
            if isinstance(alert.get("webhook"), str):
                alert["webhook"] = redact_url(alert["webhook"])
        return data

    def split_secrets(self) -> tuple[dict[str, Any], dict[str, str]]:
        """``(public(), secrets)``: what may be stored in clear, and by path (``args.token``,
        ``alerts.0.webhook``) every value ``public()`` masks, to be sealed apart."""
        public, full = self.public(), self.storage_dump()
        pairs = [
            (f"{section}.{key}", public[section][key], value)
            for section in ("args", "settings")
            for key, value in full[section].items()
        ] + [
            (f"alerts.{index}.webhook", public["alerts"][index]["webhook"], alert["webhook"])
            for index, alert in enumerate(full["alerts"])
            if "webhook" in alert
        ]
        secrets = {
            path: value["secret"] if isinstance(value, dict) else value
            for path, shown, value in pairs
            if shown != value
        }
        return public, secrets

    @classmethod
    def join_secrets(cls, public: Mapping[str, Any], secrets: Mapping[str, str]) -> TaskConfig:
        """The config ``split_secrets`` took apart (raises ``ValueError`` on a path that
        has no place in ``public``; never with a secret in the message)."""
        data: dict[str, Any] = json.loads(json.dumps(dict(public)))
        for path, value in secrets.items():
            section, _, key = path.partition(".")
            container: Any = data.get(section)
            if section == "alerts" and isinstance(container, list):
                index, _, key = key.partition(".")
                alerts = container
                container = (
                    alerts[int(index)] if index.isdigit() and int(index) < len(alerts) else None
                )
            elif section not in ("args", "settings"):
                container = None
            if not isinstance(container, dict) or key not in container:
                raise ValueError(f"the secret {path} has no place in the config")
            masked = container[key]
            container[key] = {"secret": value} if isinstance(masked, dict) else value
        return cls.model_validate(data)

    def storage_dump(self) -> dict[str, Any]:
        """Everything, plain secrets included: for the encrypted store, never for the API."""
        return self.model_dump(mode="json", context={REVEAL_SECRETS: True})

    def spider_args(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``args`` with secrets resolved, for launching the job (``-a name=value``)."""
        return {
            key: str(_resolve(value, f"args.{key}", environ)) for key, value in self.args.items()
        }

    def spider_settings(self, environ: Mapping[str, str]) -> dict[str, str | int | float | bool]:
        """``settings`` with secrets resolved, for launching the job (``-s NAME=value``)."""
        return {
            key: _resolve(value, f"settings.{key}", environ) for key, value in self.settings.items()
        }


class TaskFile(_Strict):
    """A tasks file (``HYDRA_TASKS_FILE``): ``{tasks: [...]}`` with unique names."""

    tasks: list[TaskConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> TaskFile:
        counts = Counter(task.name for task in self.tasks)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise ValueError(f"task names must be unique: {', '.join(duplicates)}")
        return self


class TaskFileError(ValueError):
    """A tasks file that cannot be read or is invalid; the message never holds its values."""


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: ``on``, ``yes``, ``off`` stay strings (an alert's ``on:`` key!)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


#: what a YAML problem may quote and we repeat: punctuation, escapes, ``<stream end>``
_GRAMMAR_TOKEN = re.compile(r"[^\w\s]{1,3}|\\[a-z]|<[a-z ]+>")


def _without_quoted(text: str) -> str:
    # YAML problems quote bits of the document ("found undefined alias 'x'"): keep only
    # grammar tokens ("expected ',' or '}'"), never a word that may be a value
    def keep(match: re.Match[str]) -> str:
        return match.group(0) if _GRAMMAR_TOKEN.fullmatch(match.group(1)) else "'...'"

    return re.sub(r"'([^']*)'", keep, text)


def load_task_file(path: str | Path) -> list[TaskConfig]:
    """The tasks of a ``.yaml``/``.yml`` or ``.json`` file; ``TaskFileError`` says what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{path}: cannot read: {type(exc).__name__}") from None
    suffix = path.suffix.lower()
    raw: object
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise TaskFileError(f"{path}: invalid JSON at {where}: {exc.msg}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            raw = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = _without_quoted(str(getattr(exc, "problem", None) or "syntax error"))
            raise TaskFileError(f"{path}: invalid YAML{where}: {problem}") from None
    else:
        raise TaskFileError(f"{path}: a tasks file ends in .yaml, .yml or .json")
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: expected a mapping with a 'tasks' list")
    try:
        return TaskFile.model_validate(raw).tasks
    except ValidationError as exc:
        raise TaskFileError(f"{path}: {validation_error_text(exc)}") from None
