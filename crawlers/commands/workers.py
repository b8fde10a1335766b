"""``scrapy workers <spider> [-p N]``: one worker process per core, sharing one queue.

A Scrapy process runs on one core; a worker is CPU-bound long before the
network is, so a machine with N cores runs N workers. This starts N ``scrapy
crawl <spider>`` processes with the same settings and environment, gives each
its own JSON-lines files (``out.jsonl`` becomes ``out.p0.jsonl``, ``out.p1.jsonl``
...: two processes never share a file), forwards SIGINT/SIGTERM to all of them
(each shuts down gracefully: what it fetched is stored and acked, the rest goes
back to the queue), and exits with the worst exit status among them. Spider
arguments (``-a ids=...``) go to the first process only, which queues the
messages for all. More than one process needs a shared queue (``HYDRA_REDIS_URL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from crawlers.commands.crawl import CONFIG_ERROR, config_problems
from crawlers.config import HydraConfig

if TYPE_CHECKING:
    import argparse


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def per_process_path(path: str, index: int | str) -> str:
    """``out/prices.jsonl`` -> ``out/prices.p1.jsonl`` (``index`` 1; a region name
    ``eu`` gives ``out/prices.eu.jsonl``)."""
    posix = PurePosixPath(path)
    tag = f"p{index}" if isinstance(index, int) else index
    return str(posix.with_name(f"{posix.stem}.{tag}{posix.suffix}"))


def per_process_sink(uri: str, index: int | str) -> str:
    """File sinks get a file per process; other sinks (a warehouse) are shared."""
    prefix = "jsonl://"
    if urlsplit(uri).scheme != "jsonl" or not uri.startswith(prefix):
        return uri
    path, separator, query = uri[len(prefix) :].partition("?")
    return prefix + per_process_path(path, index) + separator + query


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "[options] <spider>"

    def short_desc(self) -> str:
        return "Run N worker processes of a task spider that share one queue"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "-p",
            "--processes",
            type=int,
            default=0,
            help="worker processes (default: one per core)",
        )
        parser.add_argument(
            "-a", dest="spargs", action="append", default=[], metavar="NAME=VALUE",
            help="spider argument, for the first process only",
        )  # fmt: skip

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("name one spider")
        assert self.settings is not None and self.crawler_process is not None
        spidercls = self.crawler_process.spider_loader.load(args[0])
        settings = self.settings.copy()
        spidercls.update_settings(settings)
        problems = config_problems(settings, getattr(spidercls, "task_kind", ""))
        count = opts.processes or usable_cores()
        config = None if problems else HydraConfig.from_settings(settings)
        if config is not None and count > 1 and config.embedded:
            problems.append("HYDRA_REDIS_URL: several processes need a shared queue")
        if problems or config is None:
            for problem in problems:
                print(f"Configuration error: {problem}", file=sys.stderr)
            self.exitcode = CONFIG_ERROR
            return
        commands = [self._command(args[0], opts, config, n, count) for n in range(count)]
        self.exitcode = supervise(commands)

    def _command(
        self, spider: str, opts: argparse.Namespace, config: HydraConfig, index: int, count: int
    ) -> list[str]:
        command = [sys.executable, "-m", "scrapy", "crawl", spider]
        for setting in getattr(opts, "set", []) or []:
            command += ["-s", setting]
        if count > 1:
            sinks = ",".join(per_process_sink(uri, index) for uri in config.sinks)
            command += ["-s", f"HYDRA_SINKS={sinks}"]
            if config.summary_path:
                command += [
                    "-s",
                    f"HYDRA_SUMMARY_PATH={per_process_path(config.summary_path, index)}",
                ]
        if index == 0:
            for argument in opts.spargs:
                command += ["-a", argument]
        return command


def supervise(commands: list[list[str]]) -> int:
    """Run the processes, forward stop signals to them, return the worst exit status."""
    processes = [subprocess.Popen(command) for command in commands]

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in processes]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((code if code >= 0 else 128 - code for code in codes), default=0)
