"""``scrapy scheduler``: seed 001's scheduler service and its API.

Needs ``HYDRA_API_KEYS`` (operator keys); binds ``HYDRA_SCHEDULER_BIND``
(``127.0.0.1:6820``) or ``--bind``. State in ``HYDRA_DB_URL`` (SQLite by
default); task configs from the API and ``HYDRA_TASKS_FILE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import uvicorn
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.db.state import StateDB
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.service import Scheduler

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Run the Hydra scheduler: task configs, triggers, job states, retries, alerts"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--bind", help="host:port (default: HYDRA_SCHEDULER_BIND)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        try:
            config = HydraConfig.from_settings(self.settings)
        except HydraConfigError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        if not config.api_keys:
            raise UsageError("scrapy scheduler needs HYDRA_API_KEYS (comma-separated keys)")
        host, _, port = (opts.bind or config.scheduler_bind).rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--bind/HYDRA_SCHEDULER_BIND: expected host:port, got {opts.bind!r}")
        scheduler = Scheduler(config, StateDB(config.db_url))
        uvicorn.run(
            create_app(config, scheduler),
            host=host,
            port=int(port),
            log_level="info",
            access_log=False,
        )
        self.exitcode = 0
