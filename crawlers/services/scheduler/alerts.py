"""Alerts of failed jobs: a JSON webhook, or an e-mail through ``HYDRA_SMTP_URL``.

An alert that cannot be delivered is logged (without the hook's or server's
credentials) and never fails the scheduler. A webhook URL is a secret as a whole
(chat hooks carry their token in the path): logs show its origin only, httpx's own
request line included.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from contextvars import ContextVar
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from crawlers.config import HydraConfig

logger = logging.getLogger(__name__)

#: set while an alert webhook is posted, for :class:`_AlertRequestLog`
_POSTING_ALERT: ContextVar[bool] = ContextVar("hydra_posting_alert", default=False)


def webhook_origin(url: str) -> str:
    """What a log may show of a webhook URL: ``scheme://host[:port]``, never its
    credentials, path or query."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(invalid URL)"
    if not parts.scheme or not host:
        return "(invalid URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class _AlertRequestLog(logging.Filter):
    """httpx logs each request's full URL (INFO ``HTTP Request: POST <url> ...``); while
    an alert is posted, the URL is cut to its origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _POSTING_ALERT.get() and isinstance(record.args, tuple):
            record.args = tuple(
                webhook_origin(str(arg)) if isinstance(arg, httpx.URL) else arg
                for arg in record.args
            )
        return True


_HTTPX_LOGGER = logging.getLogger("httpx")
if not any(isinstance(existing, _AlertRequestLog) for existing in _HTTPX_LOGGER.filters):
    _HTTPX_LOGGER.addFilter(_AlertRequestLog())


class Alerter:
    def __init__(self, config: HydraConfig) -> None:
        self.smtp_url = config.smtp_url
        self.sender = config.alert_from
        self.sent: list[dict[str, Any]] = []

    async def webhook(self, url: str, event: dict[str, Any]) -> bool:
        where = webhook_origin(url)
        posting = _POSTING_ALERT.set(True)
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                answer = await client.post(url, json=event)
            answer.raise_for_status()
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            logger.warning("Alert webhook to %s failed: HTTP status %d", where, status)
            return False
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # their text may quote the URL
            logger.warning("Alert webhook to %s failed: %s", where, type(exc).__name__)
            return False
        finally:
            _POSTING_ALERT.reset(posting)
        return True

    async def email(self, address: str, event: dict[str, Any]) -> bool:
        if not self.smtp_url:
            logger.warning("E-mail alert to %s not sent: HYDRA_SMTP_URL is not set", address)
            return False
        message = EmailMessage()
        message["From"], message["To"] = self.sender, address
        message["Subject"] = f"[hydra] {event['task']}: {event['event']} ({event['state']})"
        message.set_content("\n".join(f"{key}: {value}" for key, value in event.items()))
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException, ValueError) as exc:  # ValueError: a bad port
            logger.warning("E-mail alert to %s failed: %s", address, type(exc).__name__)
            return False
        return True

    def _send(self, message: EmailMessage) -> None:
        parts = urlsplit(self.smtp_url)
        with smtplib.SMTP(parts.hostname or "127.0.0.1", parts.port or 25, timeout=10) as smtp:
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
