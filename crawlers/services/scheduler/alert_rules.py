"""Which of a task's alert rules an ended job triggers, and what each alert says.

A rule names the events it is for (``failure``, ``timeout``, ``zero_items``,
``consecutive_failures``); the job's end decides which happened. The alert body
is the same for a webhook and an e-mail, so one reader's tooling serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from crawlers.models.task_config import EmailAlert, EnvRef, SecretValue, TaskConfig
from crawlers.services.scheduler.alerts import Alerter

FAILED_STATES = ("failed", "timed_out")


def ended_events(state: str, stats: Mapping[str, Any]) -> set[str]:
    """The alert events a job's end is, before counting consecutive failures."""
    events: set[str] = set()
    if state in FAILED_STATES:
        events.add("failure")
    if state == "timed_out":
        events.add("timeout")
    if state == "succeeded" and int(stats.get("item_scraped_count", 0) or 0) == 0:
        events.add("zero_items")  # a Spidermon-style check on the final stats
    return events


def resolve_url(value: str | SecretValue | EnvRef, environ: Mapping[str, str]) -> str:
    if isinstance(value, SecretValue):
        return value.secret.get_secret_value()
    if isinstance(value, EnvRef):
        return environ.get(value.env, "")
    return value


async def send_alerts(
    alerter: Alerter,
    task: TaskConfig,
    job: Mapping[str, Any],
    *,
    consecutive_failures: int,
    at: datetime,
    environ: Mapping[str, str],
) -> int:
    """Send the alerts of ``task``'s rules that the job's end (``job``: ``job_id``,
    ``state``, ``reason``, ``stats``) triggers; how many rules fired."""
    stats: Mapping[str, Any] = job["stats"]
    events = ended_events(job["state"], stats)
    fired = 0
    for rule in task.alerts:
        hit = events & set(rule.on)
        if "consecutive_failures" in rule.on and consecutive_failures >= rule.consecutive:
            hit.add("consecutive_failures")
        if not hit:
            continue
        fired += 1
        event = {
            "task": task.name, "job_id": job["job_id"], "state": job["state"],
            "reason": job["reason"], "event": ",".join(sorted(hit)),
            "consecutive_failures": consecutive_failures,
            "items": stats.get("item_scraped_count", 0), "at": at.isoformat(),
        }  # fmt: skip
        if isinstance(rule, EmailAlert):
            await alerter.email(rule.email, event)
        else:
            await alerter.webhook(resolve_url(rule.webhook, environ), event)
    return fired
