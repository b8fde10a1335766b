"""``scrapy controller``: seed 000's control service (API, dispatcher, regions).

Needs ``HYDRA_REDIS_URL`` and ``HYDRA_API_KEYS``; binds ``HYDRA_CONTROLLER_BIND``
(or ``--bind``). Workers it launches locally get the controller's environment
plus every ``HYDRA_*`` setting given on its command line, and ``HYDRA_REGION``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

from crawlers.config import PREFIX
from crawlers.services.command import ServiceCommand
from crawlers.services.controller.app import create_app
from crawlers.services.controller.service import Controller

if TYPE_CHECKING:
    import argparse


class Command(ServiceCommand):
    service = "controller"
    bind_setting = "HYDRA_CONTROLLER_BIND"

    def short_desc(self) -> str:
        return "Run the Hydra controller: run API, dispatcher, regions and their workers"

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        config = self.service_config()
        if not config.redis_url:
            raise UsageError("scrapy controller needs HYDRA_REDIS_URL (runs live in Redis)")
        controller = Controller(config, env=worker_environment(self.settings))
        self.serve(create_app(config, controller), opts.bind or config.controller_bind, config)


def worker_environment(settings: object) -> dict[str, str]:
    """The environment for local workers: ours, plus ``HYDRA_*`` given as settings."""
    env = dict(os.environ)
    for name, value in getattr(settings, "attributes", {}).items():
        if name.startswith(PREFIX) and name not in env:
            raw = value.value
            env[name] = raw if isinstance(raw, str) else json.dumps(raw)
    return env
