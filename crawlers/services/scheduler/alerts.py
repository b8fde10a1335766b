"""Alerts of failed jobs: a JSON webhook, or an e-mail through ``HYDRA_SMTP_URL``.

An alert that cannot be delivered is logged (without the hook's or server's
credentials) and never fails the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from crawlers.config import HydraConfig
from crawlers.models.redaction import redact_url

logger = logging.getLogger(__name__)


class Alerter:
    def __init__(self, config: HydraConfig) -> None:
        self.smtp_url = config.smtp_url
        self.sender = config.alert_from
        self.sent: list[dict[str, Any]] = []

    async def webhook(self, url: str, event: dict[str, Any]) -> bool:
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                answer = await client.post(url, json=event)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("Alert webhook %s failed: %s", redact_url(url), type(exc).__name__)
            return False
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
        except (OSError, smtplib.SMTPException) as exc:
            logger.warning("E-mail alert to %s failed: %s", address, type(exc).__name__)
            return False
        return True

    def _send(self, message: EmailMessage) -> None:
        parts = urlsplit(self.smtp_url)
        with smtplib.SMTP(parts.hostname or "127.0.0.1", parts.port or 25, timeout=10) as smtp:
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(message)
