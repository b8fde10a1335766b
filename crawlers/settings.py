"""Scrapy settings of the Hydra project.

Hydra's own ``HYDRA_*`` settings are documented (with defaults) in
``crawlers/config.py`` and ``docs/settings.md``; they may also be given as
environment variables. This module only sets Scrapy's settings that hold for
every spider; the task machinery is added by ``TaskSpider.update_settings`` and
each kind's own settings live with its spider (``custom_settings``).
"""

from __future__ import annotations

BOT_NAME = "hydra"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"
# `scrapy crawl` with exit codes and config errors, `scrapy deadletter`
COMMANDS_MODULE = "crawlers.commands"

# Scrapy 2.19 runs an HTTP server that executes code sent to it; workers never need it.
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False

LOG_LEVEL = "INFO"
ROBOTSTXT_OBEY = False  # workers call APIs they are entitled to, by POST
DOWNLOAD_TIMEOUT = 30


# Scrapy re-parses a generator callback's source with `ast` on every response when
# the callback is a bound method (its cache misses): ~8% of a worker's CPU.
WARN_ON_GENERATOR_RETURN_VALUE = False
# no "Crawled"/"Scraped" log records built when nothing would print them
LOG_FORMATTER = "crawlers.logformatter.QuietLogFormatter"

EXTENSIONS = {
    # credentials in URLs and messages are masked in every log line
    "crawlers.extensions.log_redaction.LogRedaction": 0,
    # a crawl the scheduler started (HYDRA_JOB_ID) reports running, progress and its end;
    # after CoreStats (0), so its final stats carry finish_reason
    "crawlers.extensions.job_status.JobStatusReporter": 900,
    # /metrics for Prometheus on HYDRA_METRICS_PORT (docs/metrics.md); off when unset
    "crawlers.extensions.metrics.WorkerMetrics": 910,
    # errors to Sentry with task kind/spider/job/region/channel tags; off without HYDRA_SENTRY_DSN
    "crawlers.extensions.sentry.SentryReporter": 920,
}
