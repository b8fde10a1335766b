"""Seed 003's fetch workers: ``scrapy crawl s3``, ``scrapy crawl ftp``, ``scrapy crawl fetch``.

Locally: ``scrapy crawl s3 -a task=@task.json`` (a file, or the JSON inline) runs
one task on embedded defaults. Distributed: with ``HYDRA_REDIS_URL``, each
consumes the tasks of its source type(s) pushed onto ``hydra:fetch:tasks``;
``fetch`` takes every type this project can fetch.

A job (one run) lists the source, then fetches the matching files one at a time
(streamed to a temporary file and hashed on the way) and hands each to the file
pipelines (dedup, store, record); last comes the job's result, which the job
pipeline records and publishes on the parsers and status topics. The task is
acknowledged after that, by the ledger.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import ValidationError

from crawlers.config import HydraConfig
from crawlers.extensions.fetch_services import FetchServices
from crawlers.items import FetchedFileItem, JobResultItem
from crawlers.models import FETCH_TASK
from crawlers.models.validation import validation_error_text
from crawlers.sources import RemoteFile, Source, SourceError
from crawlers.spiders.base import TaskSpider

if TYPE_CHECKING:
    from crawlers.db.state import RetryPolicy
    from crawlers.tasks.base import TaskRun

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def open_source(task: Any, config: HydraConfig) -> Source:
    """The source for a task's ``source_type`` (no network I/O until used)."""
    limits = {"max_file_bytes": config.fetch_max_file_bytes, "max_files": config.fetch_max_files}
    if task.source_type == "s3":
        from crawlers.sources.s3 import S3Source

        return S3Source(task.config, **limits)
    if task.source_type == "ftp":
        from crawlers.sources.ftp import FtpSource

        return FtpSource(task.config, **limits)
    raise ValueError(f"no file source for source_type {task.source_type!r}")


class FetchSpider(TaskSpider):
    name = "fetch"
    task_kind = "fetch_task"
    #: source types this spider fetches (the queue routes the others away)
    source_types: ClassVar[frozenset[str]] = frozenset({"s3", "ftp"})
    task_components: ClassVar[dict[str, dict[str, int]]] = {
        "EXTENSIONS": {"crawlers.extensions.fetch_services.FetchServices": 200},
        "ITEM_PIPELINES": {
            "crawlers.pipelines.files.FileDedupPipeline": 300,
            "crawlers.pipelines.files.FileStorePipeline": 400,
            "crawlers.pipelines.files.FileRecordPipeline": 500,
            "crawlers.pipelines.jobs.JobResultPipeline": 600,
        },
    }

    def __init__(self, task: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_argument = task

    def seed_payloads(self) -> list[str]:
        """``-a task=@path/to/task.json`` or ``-a task='{...}'``: queued, then consumed."""
        if not self.task_argument:
            if HydraConfig.from_crawler(self.crawler).embedded:
                logger.warning(
                    "Nothing to do: pass -a task=@task.json, or set HYDRA_REDIS_URL to consume "
                    "the tasks pushed to %s",
                    HydraConfig.from_crawler(self.crawler).fetch_queue_key,
                )
            return []
        text = self.task_argument
        if text.startswith("@"):
            text = Path(text[1:]).read_text(encoding="utf-8")
        try:
            task = FETCH_TASK.validate_json(text)  # a usage error, not a dead letter
        except ValidationError as exc:  # pydantic echoes inputs: keep passwords out of the log
            raise ValueError(validation_error_text(exc)) from None
        if task.source_type not in self.source_types:
            raise ValueError(f"`scrapy crawl {self.name}` does not fetch {task.source_type}")
        return [text]

    async def start_task(self, run: TaskRun) -> AsyncIterator[Any]:
        task = run.message
        services = FetchServices.of(self.crawler)
        config = HydraConfig.from_crawler(self.crawler)
        started = time.monotonic()
        policy = await services.db.retry_policy(task.channel_id)
        await services.db.start_job(
            job_id=task.job_id,
            channel_id=task.channel_id,
            source_type=task.source_type,
            metadata={"attempt": task.attempt, "deliveries": run.delivery.redeliveries},
        )
        job = _JobCounts()
        source: Source | None = None
        workdir = Path(tempfile.mkdtemp(prefix="hydra-fetch-"))
        try:
            # Inside the try: a source refusing its options fails the job
            # instead of requeueing the task forever.
            source = open_source(task, config)
            listing = await self._retrying(source.list, policy, job)
            job.refused = listing.refused
            self._inc("hydra/fetch/files_refused", len(listing.refused))
            await self._fetch_all(run, source, listing.files, policy, job, workdir)
        except (SourceError, ValueError) as exc:
            job.failure = str(exc)
        finally:
            if source is not None:
                await source.close()
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        if run.finished:
            return
        result = job.result(task, time.monotonic() - started)
        yield result
        if result.error:
            raise RuntimeError(f"the job's result could not be published: {result.error}")

    async def _fetch_all(
        self,
        run: TaskRun,
        source: Source,
        files: list[RemoteFile],
        policy: RetryPolicy,
        job: _JobCounts,
        workdir: Path,
    ) -> None:
        """Up to ``HYDRA_FETCH_CONCURRENCY`` files at a time; the first error (source,
        store or database) ends the job. Files in flight are let finish, never
        cancelled: a cancelled store would leave its item counted as pending, and
        the task held. Only as many coroutines as slots exist, however many files."""
        pending = iter(enumerate(files))
        errors: list[BaseException] = []

        async def worker() -> None:
            for number, remote in pending:  # shared: each file is taken once
                if errors or run.finished:
                    return
                try:
                    await self._fetch_one(run, source, remote, policy, job, workdir / str(number))
                except Exception as exc:
                    errors.append(exc)
                    return

        width = min(HydraConfig.from_crawler(self.crawler).fetch_concurrency, len(files))
        await asyncio.gather(*(worker() for _ in range(width)))
        if errors:
            raise errors[0]

    async def _fetch_one(
        self,
        run: TaskRun,
        source: Source,
        remote: RemoteFile,
        policy: RetryPolicy,
        job: _JobCounts,
        local: Path,
    ) -> None:
        task = run.message
        try:
            fetched = await self._retrying(
                functools.partial(source.fetch, remote, local), policy, job
            )
            self._inc("hydra/fetch/files_checked")
            item = FetchedFileItem(
                job_id=task.job_id,
                channel_id=task.channel_id,
                source_type=task.source_type,
                path=remote.path,
                size=fetched.size,
                sha256=fetched.sha256,
                local_path=str(fetched.local_path),
            )
            await self.store_item(run, item)  # dedup, store, record: done when this returns
            if item.outcome == "error":  # our store or database, not the source
                raise RuntimeError(item.error)
            job.count(item)
        finally:
            await asyncio.to_thread(local.unlink, True)

    async def _retrying(
        self, operation: Callable[[], Awaitable[_T]], policy: RetryPolicy, job: _JobCounts
    ) -> _T:
        """The channel's retry policy: transient errors are tried again after a delay."""
        attempt = 0
        while True:
            try:
                return await operation()
            except SourceError as exc:
                if not exc.transient or attempt >= policy.max_simple_retries:
                    raise
                attempt += 1
                job.retries += 1
                self._inc("hydra/fetch/source_retries")
                logger.warning(
                    "%s (retry %d of %d in %g s)",
                    exc,
                    attempt,
                    policy.max_simple_retries,
                    policy.retry_delay_seconds,
                )
                await asyncio.sleep(policy.retry_delay_seconds)

    def _inc(self, key: str, count: int = 1) -> None:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(key, count)


class _JobCounts:
    def __init__(self) -> None:
        self.checked = 0
        self.uploaded = 0
        self.unchanged = 0
        self.retries = 0
        self.refused: list[str] = []
        self.failure = ""

    def count(self, item: FetchedFileItem) -> None:
        self.checked += 1
        if item.outcome == "uploaded":
            self.uploaded += 1
        elif item.outcome == "unchanged":
            self.unchanged += 1

    def result(self, task: Any, seconds: float) -> JobResultItem:
        if self.failure:
            status, message = "failed", self.failure
        else:
            status = "success"
            message = f"{self.uploaded} new or changed files stored, {self.unchanged} unchanged" + (
                f", {len(self.refused)} refused (unsafe names)" if self.refused else ""
            )
        return JobResultItem(
            job_id=task.job_id,
            channel_id=task.channel_id,
            source_type=task.source_type,
            status=status,
            message=message,
            files_processed=self.checked,
            files_uploaded=self.uploaded,
            execution_time_seconds=seconds,
            metadata={
                "files_unchanged": self.unchanged,
                "files_refused": self.refused[:100],
                "source_retries": self.retries,
                "attempt": task.attempt,
            },
        )


class S3Spider(FetchSpider):
    name = "s3"
    source_types: ClassVar[frozenset[str]] = frozenset({"s3"})


class FtpSpider(FetchSpider):
    name = "ftp"
    source_types: ClassVar[frozenset[str]] = frozenset({"ftp"})
