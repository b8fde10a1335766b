"""Seed 003's web/API channels: ``scrapy crawl web -a task=@task.json``.

A channel seen for the first time (``is_new``, or no fetcher mapped yet) is
captured in headless Chromium, its data API (or repeated DOM structure) is
found in the HAR, a readable fetcher module is generated, committed to the
fetchers repository as ``<domain>_fetcher_v<N>`` and mapped to the channel, then
run. Later tasks run the mapped fetcher without a browser. What a run fetches
(every page body, and the items as JSON lines) goes through the same file
pipelines as S3/FTP: dedup by content hash, store by job, parsers and status.

A failure is classified: network errors, timeouts, 5xx and 429 are retried
(the channel's ``max_simple_retries``); a site change (a known endpoint now
404/410, the data's shape drifted, nothing matched, far fewer items than the
last good run) fails the job as ``website changed`` and queues a heal task
(``heal_mode=true``), which :mod:`crawlers.fetchers.heal` turns into version N+1,
validated on every channel of version N before it is promoted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from parsel import Selector
from scrapy.exceptions import IgnoreRequest
from scrapy.http import FormRequest, Request, Response, TextResponse

from crawlers.extensions.fetch_services import FetchServices
from crawlers.fetchers.runtime import AuthRejected, FetcherError, SiteChanged, TransientFailure
from crawlers.fetchers.workshop import BuildFailed, FetcherWorkshop
from crawlers.items import FetchedFileItem, JobResultItem
from crawlers.spiders.fetch import FetchSpider

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crawlers.db.state import RetryPolicy
    from crawlers.tasks.base import TaskRun

logger = logging.getLogger(__name__)

#: statuses worth a simple retry (the site is there, just not now)
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebSpider(FetchSpider):
    name = "web"
    source_types: ClassVar[frozenset[str]] = frozenset({"html", "api"})
    task_components: ClassVar[dict[str, dict[str, int]]] = {
        "EXTENSIONS": {
            **FetchSpider.task_components["EXTENSIONS"],
            "crawlers.fetchers.workshop.FetcherWorkshop": 210,
        },
        "ITEM_PIPELINES": FetchSpider.task_components["ITEM_PIPELINES"],
    }

    async def start_task(self, run: TaskRun) -> AsyncIterator[Any]:
        task = run.message
        services = FetchServices.of(self.crawler)
        workshop = FetcherWorkshop.of(self.crawler)
        started = time.monotonic()
        policy = await services.db.retry_policy(task.channel_id)
        await services.db.start_job(
            job_id=task.job_id,
            channel_id=task.channel_id,
            source_type=task.source_type,
            metadata={"attempt": task.attempt, "heal_mode": task.heal_mode},
        )
        job = WebJob()
        workdir = Path(tempfile.mkdtemp(prefix="hydra-web-"))
        try:
            try:
                if task.heal_mode:
                    heal = await workshop.heal(task, policy, workdir, self._runner(policy, job))
                    job.fetcher, job.review = heal.fetcher, heal.review
                    self.crawler.stats.inc_value(f"hydra/heal/{heal.result}")
                    if heal.review:
                        job.failure = "requires_human_review: " + "; ".join(heal.reasons)
                if not job.failure:
                    fetcher = await workshop.fetcher_for(task, workdir)
                    job.fetcher = fetcher.name
                    await self._run(run, task, fetcher.cls, policy, job, workdir)
                    await workshop.check_count(task.channel_id, job.items)
            except SiteChanged as exc:
                job.failure, job.heal = f"website changed: {exc}", not task.heal_mode
            except (BuildFailed, TransientFailure, AuthRejected) as exc:
                # still failing after the simple retries, or refused credentials: no heal
                job.failure = str(exc)
            if not run.finished:  # what the browser recorded, if it was opened
                await self._keep_captures(run, task, workdir, job)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        if run.finished:
            return
        if job.heal:
            await workshop.queue_heal(self.ledger, task, job.failure)
            self.crawler.stats.inc_value("hydra/heal/queued")
        result = job.result(task, time.monotonic() - started)
        yield result
        if result.error:
            raise RuntimeError(f"the job's result could not be published: {result.error}")

    def _runner(self, policy: RetryPolicy, job: WebJob) -> Any:
        """How heal validation runs a candidate: the same fetch loop, storing nothing."""

        async def run_candidate(fetcher_cls: type[Any], task: Any) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            await self._walk(fetcher_cls, task, policy, job, on_page=None, items=items)
            return items

        return run_candidate

    async def _run(
        self,
        run: TaskRun,
        task: Any,
        fetcher_cls: type[Any],
        policy: RetryPolicy,
        job: WebJob,
        workdir: Path,
    ) -> None:
        items: list[dict[str, Any]] = []
        pages = 0

        async def on_page(response: TextResponse) -> None:
            nonlocal pages
            pages += 1
            suffix = (
                ".json" if b"json" in (response.headers.get("Content-Type") or b"") else ".html"
            )
            await self._store(run, task, f"pages/{pages:04d}{suffix}", response.body, workdir, job)

        await self._walk(fetcher_cls, task, policy, job, on_page=on_page, items=items)
        job.items = len(items)
        body = "".join(json.dumps(item, sort_keys=True, default=str) + "\n" for item in items)
        await self._store(run, task, "items.jsonl", body.encode(), workdir, job)

    async def _walk(
        self,
        fetcher_cls: type[Any],
        task: Any,
        policy: RetryPolicy,
        job: WebJob,
        *,
        on_page: Any,
        items: list[dict[str, Any]],
    ) -> None:
        fetcher = fetcher_cls()
        auth_keys = _secrets(task.config.auth_keys)
        # the channel's own cookies (a login session), apart from other channels of the site
        jar = f"web:{task.channel_id}"
        await self._log_in(task, policy, job, jar)
        pending: deque[Request] = deque(fetcher.first_requests(auth_keys, url=task.config.url))
        requested = 0
        while pending:
            requested += 1
            if requested > self.workshop_config.web_max_pages:
                raise SiteChanged(f"more than {self.workshop_config.web_max_pages} pages: a loop?")
            request = pending.popleft()
            request = request.replace(meta={**request.meta, "cookiejar": jar})
            response = await self._fetch_with_retries(request, policy, job)
            try:
                page_items, follow = fetcher.parse(response)
            except FetcherError:
                raise
            except Exception as exc:  # the fetcher's own code broke: heal it like a change
                raise SiteChanged(
                    f"code error in the fetcher: {type(exc).__name__}: {exc}"
                ) from exc
            if request.meta.get("hydra_fetcher_step") != "token" and on_page is not None:
                await on_page(response)
            items.extend(page_items)
            pending.extend(follow)

    async def _log_in(self, task: Any, policy: RetryPolicy, job: WebJob, jar: str) -> None:
        """Sign in with the task's ``login_credentials`` before a run, without a browser:
        open the channel's page and, where it shows a login form (a password field),
        submit it; the session cookie lands in the channel's jar. A page without such a
        form is taken as signed in already. Credentials go only in the POST body,
        which is never logged nor stored; a form that would put them in its URL is
        refused."""
        login = task.config.login_credentials
        if login is None or not login.password.get_secret_value():
            return
        page = await self._fetch_with_retries(
            Request(task.config.url, meta={"cookiejar": jar}), policy, job
        )
        found = _login_form(page)
        if found is None:
            return
        number, form = found
        where = _where(page.url)
        if (form.attrib.get("method") or "get").lower() != "post":
            raise AuthRejected(f"the login form at {where} would send the password in its URL")
        password_field = form.css("input[type=password]").attrib.get("name")
        formdata = {password_field: login.password.get_secret_value()} if password_field else {}
        if login.username:
            user_field = _username_field(form)
            if user_field is None:
                raise AuthRejected(f"no username field in the login form at {where}")
            formdata[user_field] = login.username
        if not password_field:
            raise AuthRejected(f"the login form at {where} has no named password field")
        request = FormRequest.from_response(
            page,
            formnumber=number,
            formdata=formdata,
            meta={"cookiejar": jar},
        )
        answer = await self._fetch_with_retries(request, policy, job)
        if answer.status >= 400 or _login_form(answer) is not None:
            raise AuthRejected(f"the login at {where} was refused (HTTP {answer.status})")
        logger.info("Channel %s: signed in at %s", task.channel_id, where)

    @property
    def workshop_config(self) -> Any:
        return FetcherWorkshop.of(self.crawler).config

    async def _fetch_with_retries(
        self, request: Request, policy: RetryPolicy, job: WebJob
    ) -> TextResponse:
        # the channel's policy, not Scrapy's RetryMiddleware: its retries would be
        # uncounted, undelayed and blind to ``max_simple_retries``
        request = request.replace(dont_filter=True, meta={**request.meta, "dont_retry": True})
        attempt = 0
        while True:
            problem = ""
            try:
                response: Response = await self.fetch(request)
            except IgnoreRequest:
                raise
            except Exception as exc:  # network: refused, reset, DNS, timeout
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status in TRANSIENT_STATUSES:
                    problem = f"HTTP {response.status}"
                elif not isinstance(response, TextResponse):
                    raise SiteChanged(f"{request.url} is no longer text")
                else:  # other statuses are the fetcher's to classify (410: site changed...)
                    return response
            if attempt >= policy.max_simple_retries:
                raise TransientFailure(f"{problem} after {attempt} retries ({request.url})")
            attempt += 1
            job.retries += 1
            self._inc("hydra/web/retries")
            logger.warning(
                "%s on %s (retry %d of %d)",
                problem,
                request.url,
                attempt,
                policy.max_simple_retries,
            )
            await asyncio.sleep(policy.retry_delay_seconds)

    async def _store(
        self, run: TaskRun, task: Any, path: str, body: bytes, workdir: Path, job: WebJob
    ) -> None:
        local = workdir / hashlib.sha256(path.encode()).hexdigest()
        await asyncio.to_thread(local.write_bytes, body)
        item = FetchedFileItem(
            job_id=task.job_id,
            channel_id=task.channel_id,
            source_type=task.source_type,
            path=path,
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            local_path=str(local),
        )
        try:
            await self.store_item(run, item)
        finally:
            await asyncio.to_thread(local.unlink, True)
        if item.outcome == "error":
            raise RuntimeError(item.error)
        job.count(item)

    async def _keep_captures(self, run: TaskRun, task: Any, workdir: Path, job: WebJob) -> None:
        """The HARs (credentials already masked) and screenshots of this job's captures,
        stored with the job: under ``capture/`` when a fetcher was generated, under
        ``review/`` (one folder per heal attempt) when a person must look."""
        folder = "review" if job.review else "capture"
        for path in await asyncio.to_thread(_captures, workdir):
            # capture-v1/capture.har -> capture.har; heal-2/capture-v3/x.png -> heal-2/x.png
            parts = [p for p in path.relative_to(workdir).parts if not p.startswith("capture-v")]
            body = await asyncio.to_thread(path.read_bytes)
            await self._store(run, task, "/".join([folder, *parts]), body, workdir, job)


def _captures(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob("*") if p.is_file() and p.suffix in (".har", ".png"))


#: the username input of a login form, most telling first
_USERNAME_INPUTS = (
    "input[autocomplete=username]",
    "input[type=email]",
    "input[name*=user i]",
    "input[name*=email i]",
    "input[name*=login i]",
    "input[type=text]",
    "input:not([type])",
)


def _login_form(response: TextResponse) -> tuple[int, Selector] | None:
    """The form holding a password field (its position among the page's forms), if
    the page shows one."""
    if b"html" not in (response.headers.get("Content-Type") or b""):
        return None
    for number, form in enumerate(response.css("form")):
        if form.css("input[type=password]"):
            return number, form
    return None


def _username_field(form: Selector) -> str | None:
    for css in _USERNAME_INPUTS:
        for node in form.css(css):
            name = node.attrib.get("name")
            if name and node.attrib.get("type", "text").lower() not in ("hidden", "password"):
                return name
    return None


def _where(url: str) -> str:
    """The URL without its query or user info (either may hold a credential), for messages."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query=""))


def _secrets(keys: Any) -> dict[str, str]:
    if keys is None:
        return {}
    return {
        name: value.get_secret_value() for name, value in dict(keys).items() if value is not None
    }


class WebJob:
    def __init__(self) -> None:
        self.checked = self.uploaded = self.unchanged = self.retries = self.items = 0
        self.failure = ""
        self.fetcher = ""
        self.heal = False
        self.review = False

    def count(self, item: FetchedFileItem) -> None:
        self.checked += 1
        self.uploaded += item.outcome == "uploaded"
        self.unchanged += item.outcome == "unchanged"

    def result(self, task: Any, seconds: float) -> JobResultItem:
        if self.review:
            status, message = "requires_human_review", self.failure
        elif self.failure:
            status, message = "failed", self.failure + (" (heal task queued)" if self.heal else "")
        else:
            status = "success"
            message = (
                f"{self.items} items in {self.checked} files "
                f"({self.uploaded} new or changed) by {self.fetcher}"
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
                "items": self.items,
                "fetcher": self.fetcher,
                "files_unchanged": self.unchanged,
                "retries": self.retries,
                "attempt": task.attempt,
                "heal_mode": task.heal_mode,
                "heal_queued": self.heal,
            },
        )
