"""``scrapy controller``: seed 000's control service (API, dispatcher, regions).

Needs ``HYDRA_REDIS_URL`` and ``HYDRA_API_KEYS``; binds ``HYDRA_CONTROLLER_BIND``
(or ``--bind``). Workers it launches locally get the controller's environment
plus every ``HYDRA_*`` setting given on its command line, and ``HYDRA_REGION``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import uvicorn
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from crawlers.config import PREFIX, HydraConfig, HydraConfigError
from crawlers.services.controller.app import create_app
from crawlers.services.controller.service import Controller

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "[options]"

    def short_desc(self) -> str:
        return "Run the Hydra controller: run API, dispatcher, regions and their workers"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--bind", help="host:port (default: HYDRA_CONTROLLER_BIND)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        try:
            config = HydraConfig.from_settings(self.settings)
        except HydraConfigError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        if not config.redis_url:
            raise UsageError("scrapy controller needs HYDRA_REDIS_URL (runs live in Redis)")
        if not config.api_keys:
            raise UsageError("scrapy controller needs HYDRA_API_KEYS (comma-separated keys)")
        host, _, port = (opts.bind or config.controller_bind).rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--bind/HYDRA_CONTROLLER_BIND: expected host:port, got {opts.bind!r}")
        controller = Controller(config, env=worker_environment(self.settings))
        app = create_app(config, controller)
        uvicorn.run(app, host=host, port=int(port), log_level="info", access_log=False)
        self.exitcode = 0


def worker_environment(settings: object) -> dict[str, str]:
    """The environment for local workers: ours, plus ``HYDRA_*`` given as settings."""
    env = dict(os.environ)
    for name, value in getattr(settings, "attributes", {}).items():
        if name.startswith(PREFIX) and name not in env:
            raw = value.value
            env[name] = raw if isinstance(raw, str) else json.dumps(raw)
    return env
