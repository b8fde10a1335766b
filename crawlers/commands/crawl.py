"""``scrapy crawl`` that fails loudly: config errors in one line each, non-zero exits.

Scrapy's own ``crawl`` exits 0 when a worker could not reach its queue, when
every request failed, or after an error in ``start()``; a bad ``HYDRA_*``
value comes out as a long asyncio traceback. This command (found through
``COMMANDS_MODULE``, so Scrapyd's runner uses it too) checks the Hydra
settings first and prints one line per problem (exit 2), and exits 1 when the
ledger marked the run as failed (``hydra/worker/failed`` in the stats).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy.commands.crawl import Command as ScrapyCrawlCommand

from crawlers.config import HydraConfig, HydraConfigError

if TYPE_CHECKING:
    import argparse

    from scrapy.settings import BaseSettings

#: exit status for unusable settings (as for a usage error)
CONFIG_ERROR = 2


def config_problems(settings: BaseSettings, task_kind: str) -> list[str]:
    """What keeps a task spider with these settings from starting, one line each."""
    try:
        config = HydraConfig.from_settings(settings)
    except HydraConfigError as exc:
        return exc.problems
    problems = []
    if task_kind and task_kind not in config.registry("task_kinds"):
        problems.append(f"HYDRA_TASK_KINDS: no task kind {task_kind!r} is registered")
    sink_schemes = config.registry("sink_schemes")
    for uri in config.sinks:
        if urlsplit(uri).scheme not in sink_schemes:
            known = ", ".join(f"{name}://" for name in sorted(sink_schemes))
            problems.append(f"HYDRA_SINKS: no sink for {uri!r} (known: {known})")
    try:
        _ = urlsplit(config.redis_url).port  # parsed by the client only when it connects
    except ValueError as exc:
        problems.append(f"HYDRA_REDIS_URL={config.redis_url_redacted!r}: {exc}")
    scheme = urlsplit(config.redis_url or "memory://").scheme
    if scheme not in config.registry("queue_schemes"):
        problems.append(f"HYDRA_REDIS_URL: unsupported scheme {scheme!r}")
    return problems


class Command(ScrapyCrawlCommand):
    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1 or self.crawler_process is None or self.settings is None:
            super().run(args, opts)
            return
        spidercls = self.crawler_process.spider_loader.load(args[0])
        settings = self.settings.copy()
        spidercls.update_settings(settings)
        problems = config_problems(settings, getattr(spidercls, "task_kind", ""))
        if problems:
            for problem in problems:
                print(f"Configuration error: {problem}", file=sys.stderr)
            self.exitcode = CONFIG_ERROR
            return
        crawler = self._create_crawler(spidercls)
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        failed = crawler.stats.get_value("hydra/worker/failed") if crawler.stats else None
        if self.crawler_process.bootstrap_failed or failed:
            self.exitcode = 1
