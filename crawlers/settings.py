"""Scrapy settings of the Hydra project.

Hydra's own ``HYDRA_*`` settings are documented (with defaults) in
``crawlers/config.py`` and ``docs/settings.md``; they may also be given as
environment variables. This module only sets Scrapy's settings.
"""

from __future__ import annotations

BOT_NAME = "hydra"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# Scrapy 2.19 runs an HTTP server that executes code sent to it; workers never need it.
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False

LOG_LEVEL = "INFO"
ROBOTSTXT_OBEY = False  # workers call APIs they are entitled to, by POST
COOKIES_ENABLED = False
DOWNLOAD_TIMEOUT = 30

# Concurrency is set by HYDRA_QUEUE_PREFETCH (batches in flight, one request each);
# Scrapy's own limits are only raised so that they never bind first.
CONCURRENT_REQUESTS = 256
CONCURRENT_REQUESTS_PER_DOMAIN = 256
# Scrapy starts CONCURRENT_ITEMS asyncio tasks for *every* response's output
# (scrapy.utils.asyncio._parallel_asyncio); the default 100 halves a worker's
# throughput. A batch response yields one item and at most one request.
CONCURRENT_ITEMS = 2

EXTENSIONS = {
    "crawlers.extensions.task_ledger.TaskLedger": 100,
    "crawlers.extensions.run_summary.RunSummary": 900,
}
DOWNLOADER_MIDDLEWARES = {
    "crawlers.middlewares.batch_stop.BatchStopMiddleware": 950,
}
SPIDER_MIDDLEWARES = {
    "crawlers.middlewares.task_items.TaskItemsMiddleware": 950,
}
ITEM_PIPELINES = {
    "crawlers.pipelines.sinks.SinkPipeline": 900,
}
