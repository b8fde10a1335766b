"""``scrapy scheduler``: seed 001's scheduler service and its API.

Needs ``HYDRA_API_KEYS`` (operator keys); binds ``HYDRA_SCHEDULER_BIND``
(``127.0.0.1:6820``) or ``--bind``. State in ``HYDRA_DB_URL`` (SQLite by
default); task configs from the API and ``HYDRA_TASKS_FILE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crawlers.db.state import StateDB
from crawlers.services.command import ServiceCommand
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.service import Scheduler

if TYPE_CHECKING:
    import argparse


class Command(ServiceCommand):
    service = "scheduler"
    bind_setting = "HYDRA_SCHEDULER_BIND"

    def short_desc(self) -> str:
        return "Run the Hydra scheduler: task configs, triggers, job states, retries, alerts"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        config = self.service_config()
        scheduler = Scheduler(config, StateDB(config.db_url))
        self.serve(create_app(config, scheduler), opts.bind or config.scheduler_bind, config)
