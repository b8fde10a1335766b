"""What the HTTP services' Scrapy commands share (``scrapy controller``, ``scrapy
scheduler``): the typed config as a usage error, ``--bind``, the API keys, uvicorn.

It lives outside ``crawlers/commands/`` because Scrapy registers every command
class found there.
"""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING, ClassVar

import uvicorn
from pythonjsonlogger.json import JsonFormatter
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.extensions.log_redaction import install as install_redaction
from crawlers.monitoring.sentry import init_sentry

if TYPE_CHECKING:
    import argparse

    from fastapi import FastAPI

#: how long a stopping service waits for open requests (console event streams never end)
GRACEFUL_SHUTDOWN_SECONDS = 3


def freeze_startup_objects() -> None:
    """Move everything loaded so far (modules, the app, its settings) out of the garbage
    collector's reach: a long-running service's full collections then walk only what it
    made since, instead of stalling a request for ~100 ms now and then."""
    gc.collect()
    gc.freeze()


def configure_service_logging(config: HydraConfig, process: str = "service") -> None:
    """Scrapy's root handler for everything (uvicorn's loggers included), in JSON lines
    with ``HYDRA_LOG_JSON``; every handler masks credentials. With ``HYDRA_SENTRY_DSN``,
    logged errors (and so the service's exceptions) go to Sentry tagged ``process``."""
    root = logging.getLogger()
    if not root.handlers:
        plain = logging.StreamHandler()
        plain.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))
        root.addHandler(plain)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if config.log_json:
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        for handler in root.handlers:
            handler.setFormatter(formatter)
    install_redaction(config.redactor)
    init_sentry(config, process)


class ServiceCommand(ScrapyCommand):
    requires_project = True
    #: a service runs no crawler: no CrawlerProcess, whose set-up would also take over
    #: logging before the service configures it
    requires_crawler_process = False
    #: the command's name and its bind setting, for messages and ``--bind``'s default
    service: ClassVar[str] = ""
    bind_setting: ClassVar[str] = ""

    def syntax(self) -> str:
        return "[options]"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--bind", help=f"host:port (default: {self.bind_setting})")

    def service_config(self) -> HydraConfig:
        """The settings, or a usage error (exit 2) naming each bad one; keys required."""
        assert self.settings is not None
        try:
            config = HydraConfig.from_settings(self.settings)
        except HydraConfigError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        if not config.api_keys:
            raise UsageError(f"scrapy {self.service} needs HYDRA_API_KEYS (comma-separated keys)")
        return config

    def serve(self, app: FastAPI, bind: str, config: HydraConfig) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--bind/{self.bind_setting}: expected host:port, got {bind!r}")
        configure_service_logging(config, self.service)
        freeze_startup_objects()
        uvicorn.run(
            app, host=host, port=int(port), log_level="info", access_log=False, log_config=None,
            # open console pages hold event streams that never end by themselves
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )  # fmt: skip
        self.exitcode = 0
