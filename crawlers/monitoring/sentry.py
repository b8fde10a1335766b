"""Errors to Sentry (``HYDRA_SENTRY_DSN``): one ``init_sentry`` for every process.

Workers call it from the ``SentryReporter`` extension, the services
(``scrapy scheduler``, ``scrapy controller``, ``scrapy etl``) when they set up
logging. sentry-sdk's logging integration then turns every logged error into an
event; the worker extension adds spider errors and ``item_error`` dead letters
with their tags. Whatever leaves the process goes through ``before_send`` /
``before_breadcrumb`` first: every string is passed through the project's
redactor (URLs with credentials or secret query parameters, ``user:pw@``) and
``name=value`` pairs whose name looks secret, and mapping entries under a
secret-looking key are masked. No PII (sentry-sdk's default, which also keeps
its own ``EventScrubber``), no local variables in stack frames.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

import sentry_sdk

from crawlers.models.redaction import _SECRET_MARKERS, MASK, Redactor, is_secret_key

if TYPE_CHECKING:
    from crawlers.config import HydraConfig

logger = logging.getLogger(__name__)


def _pair_pattern(redactor: Redactor) -> re.Pattern[str]:
    """``token=abc`` / ``password: abc`` outside a URL (a URL's query is the redactor's):
    a name holding a secret marker, or one of the redactor's secret parameters."""
    markers = "|".join(re.escape(m).replace("_", "[_-]") for m in _SECRET_MARKERS)
    params = "|".join(re.escape(p) for p in sorted(redactor.secret_params))
    name = rf"[\w.-]*(?:{markers})[\w.-]*|(?:{params})"
    return re.compile(rf"(?i)\b({name})(\s*[=:]\s*)([^\s&,;'\"<>`]+)")


_active_dsn: str | None = None
#: event keys that hold only the SDK's own data (installed package names and versions,
#: the SDK's name): "tokenizers" is a package, not a token
_NOT_SCRUBBED = ("modules", "sdk")


class Scrubber:
    """Masks secrets in a Sentry event or breadcrumb (a copy; the SDK sends the copy)."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.pairs = _pair_pattern(redactor)

    def text(self, text: str) -> str:
        text = self.redactor.text(text)
        return self.pairs.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                key: (
                    MASK
                    if isinstance(key, str) and is_secret_key(key) and value[key] not in (None, "")
                    else self.value(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def before_send(self, event: Any, hint: Any) -> Any:
        kept = {key: event.pop(key) for key in _NOT_SCRUBBED if key in event}
        logentry = event.get("logentry")
        if isinstance(logentry, dict) and logentry.get("params"):
            # a log call's arguments are plain strings with no name saying they are
            # secret: only the formatted message (scrubbed as a whole) is sent
            if "formatted" not in logentry and "message" in logentry:
                with contextlib.suppress(TypeError, ValueError):
                    logentry["formatted"] = logentry["message"] % tuple(logentry["params"])
            logentry["params"] = []
        event = self.value(event)
        event.update(kept)
        return event

    def before_breadcrumb(self, crumb: Any, hint: Any) -> Any:
        return self.value(crumb)


def init_sentry(config: HydraConfig, process: str) -> bool:
    """Turn sentry-sdk on when ``HYDRA_SENTRY_DSN`` is set; ``process`` (``worker``,
    ``scheduler``...) becomes the ``process`` tag. Idempotent: a second call with the same
    DSN only sets the tag. Returns whether Sentry is on."""
    global _active_dsn
    dsn = config.sentry_dsn
    if not dsn:
        return False
    if _active_dsn != dsn or not sentry_sdk.get_client().is_active():
        scrubber = Scrubber(config.redactor)
        sentry_sdk.init(
            dsn=dsn,
            environment=config.sentry_environment or None,
            traces_sample_rate=config.sentry_traces_sample_rate,
            # no send_default_pii: unset means no PII plus the SDK's own EventScrubber
            # (setting it at all is deprecated in recent sentry-sdk releases)
            include_local_variables=False,
            before_send=scrubber.before_send,
            before_breadcrumb=scrubber.before_breadcrumb,
        )
        _active_dsn = dsn
        logger.info("Sentry on: errors reported to %s", config.redactor.url(dsn))
    scope = sentry_sdk.get_global_scope()
    scope.set_tag("process", process)
    scope.set_tag("region", config.region)
    if config.job_id:
        scope.set_tag("job", config.job_id)
    return True


def close_sentry() -> None:
    """Flush and turn sentry-sdk off (tests; a process that ends flushes by itself)."""
    global _active_dsn
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=5)
    sentry_sdk.get_global_scope().set_client(None)  # a non-recording client: nothing sent
    for scope in (
        sentry_sdk.get_global_scope(),
        sentry_sdk.get_isolation_scope(),
        sentry_sdk.get_current_scope(),
    ):
        scope.clear()
    _active_dsn = None
