"""Where web/API fetchers are made, found and healed (an extension of the ``web`` spider).

It owns the fetchers repository (git) and the catalog (state database), and
runs the generation loop: capture the site in headless Chromium, find its data
in the HAR, render a readable module, commit it, record it, map the channel.
Heal (seed 003's flow 3C) regenerates, validates the candidate on every channel
mapped to the broken version, and promotes it only if all pass; otherwise it
retries up to ``max_heal_retries`` and asks for a person, leaving every mapping
on the old version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tldextract
from scrapy import Spider, signals

from crawlers.config import HydraConfig
from crawlers.extensions.fetch_services import FetchServices
from crawlers.fetchers.catalog import ChannelMapping, FetcherCatalog, FetcherVersion
from crawlers.fetchers.repository import FetcherRepository, fetcher_name
from crawlers.fetchers.runtime import SiteChanged

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from crawlers.db.state import RetryPolicy
    from crawlers.extensions.task_ledger import TaskLedger

logger = logging.getLogger(__name__)
_DOMAINS = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled list only


class BuildFailed(Exception):
    """No fetcher could be generated (capture failed, no data found)."""


def structure_id(url: str) -> str:
    """The site a fetcher belongs to: the registrable domain of the URL; an IP address
    or a single-label host (``localhost``) with its port is a domain of its own."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    domain = _DOMAINS(host).top_domain_under_public_suffix
    if domain:
        return domain
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True)
class LoadedFetcher:
    name: str
    version: FetcherVersion | None
    cls: type[Any]


@dataclass
class HealOutcome:
    fetcher: str = ""
    review: bool = False
    reasons: list[str] = field(default_factory=list)
    #: ``new_channel``, ``already_working``, ``healed`` or ``needs_review`` (stats, metrics)
    result: str = "needs_review"


class FetcherWorkshop:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = HydraConfig.from_crawler(crawler)
        self.repo = FetcherRepository.from_config(self.config)
        #: one generation at a time per site in this worker: two new channels of a site,
        #: or two heal tasks of one broken version, claimed together must not both
        #: write version N (the second waits, then finds it)
        self._site_locks: dict[str, asyncio.Lock] = {}
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FetcherWorkshop:
        return cls(crawler)

    @classmethod
    def of(cls, crawler: Crawler) -> FetcherWorkshop:
        workshop = crawler.get_extension(cls)
        if workshop is None:
            raise RuntimeError(f"{cls.__name__} is not enabled: add it to EXTENSIONS")
        return workshop

    async def spider_opened(self, spider: Spider) -> None:
        await asyncio.to_thread(self.repo.open)
        logger.info("Fetchers repository: %s", self.repo.describe())

    @property
    def catalog(self) -> FetcherCatalog:
        return FetcherCatalog(FetchServices.of(self.crawler).db)

    # -- finding and making fetchers -------------------------------------------

    def site_lock(self, site: str) -> asyncio.Lock:
        return self._site_locks.setdefault(site, asyncio.Lock())

    async def fetcher_for(self, task: Any, workdir: Path) -> LoadedFetcher:
        """The channel's mapped fetcher (also when ``is_new`` names a channel we know);
        for a channel never seen, its site's latest version, or a new v1."""
        mapping = await self.catalog.mapping(task.channel_id)
        if mapping is not None:
            return self.load(mapping)
        site = structure_id(task.config.url)
        async with self.site_lock(site):  # another run may be generating this site's v1
            mapping = await self.catalog.mapping(task.channel_id)
            if mapping is not None:
                return self.load(mapping)
            latest = await self.catalog.latest(site)
            if latest is not None:  # a new channel of a known site: the latest version
                await self.catalog.map_channel(task.channel_id, latest, _public_config(task))
                return LoadedFetcher(latest.name, latest, self._class(latest.name))
            return await self.build(
                task, workdir, version=1, reason=f"new channel {task.channel_id}"
            )

    def load(self, mapping: ChannelMapping) -> LoadedFetcher:
        name = mapping.fetcher.name
        return LoadedFetcher(name, mapping.fetcher, self._class(name, mapping.config.get("pin")))

    def _class(self, name: str, commit: str | None = None) -> type[Any]:
        module = self.repo.load(name, commit)
        fetcher: type[Any] = module.Fetcher
        return fetcher

    async def build(self, task: Any, workdir: Path, *, version: int, reason: str) -> LoadedFetcher:
        """Capture, analyse, render, commit, record and map: version ``version`` of the site."""
        source, name = await self.generate(task, workdir, version=version, reason=reason)
        commit = await asyncio.to_thread(
            self.repo.commit, name, source, _commit_message(name, reason)
        )
        site = structure_id(task.config.url)
        record = await self.catalog.add_version(site, name, version)
        await self.catalog.map_channel(task.channel_id, record, _public_config(task))
        logger.info(
            "Generated %s for channel %s (commit %s)", name, task.channel_id, commit.sha[:12]
        )
        return LoadedFetcher(name, record, self._class(name))

    async def generate(
        self, task: Any, workdir: Path, *, version: int, reason: str
    ) -> tuple[str, str]:
        """The module source and name of a fresh fetcher for the task's site (not committed)."""
        from crawlers.fetchers.analysis import NoDataFound, analyse
        from crawlers.fetchers.capture import capture
        from crawlers.fetchers.generate import render_module

        site = structure_id(task.config.url)
        name = fetcher_name(site, version)
        try:
            har_path, exploration = await capture(
                task.config.url,
                login=task.config.login_credentials,
                navigation=dict(task.config.navigation_details),
                out_dir=workdir / f"capture-v{version}",
                executable_path=self.config.browser_executable,
                max_pages=self.config.capture_max_pages,
            )
        except Exception as exc:
            raise BuildFailed(
                f"capture of {task.config.url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        har = json.loads(await asyncio.to_thread(har_path.read_text, encoding="utf-8"))
        keys = {k: v.get_secret_value() for k, v in dict(task.config.auth_keys or {}).items() if v}
        try:
            recipe = analyse(har, exploration.page_texts, keys)
        except NoDataFound as exc:
            raise BuildFailed(f"no data found on {task.config.url}: {exc}") from exc
        return render_module(recipe, domain=site, version=version, reason=reason), name

    async def check_count(self, channel_id: str, items: int) -> None:
        """Far fewer items than the last good run is a site change, not a success."""
        last = await self.catalog.last_good_items(channel_id)
        if last and items < self.config.heal_tolerance * last:
            raise SiteChanged(f"{items} items where the last good run had {last}")

    # -- heal ---------------------------------------------------------------------

    async def heal(self, task: Any, policy: RetryPolicy, workdir: Path, runner: Any) -> HealOutcome:
        from crawlers.fetchers.heal import heal

        async with self.site_lock(structure_id(task.config.url)):  # one heal of a site at once
            return await heal(self, task, policy, workdir, runner)

    async def queue_heal(self, ledger: TaskLedger, task: Any, reason: str) -> None:
        """A heal task for the channel, on the same intake (routed to a web worker)."""
        heal_task = task.model_copy(
            update={"job_id": f"{task.job_id}-heal"[:255], "heal_mode": True, "is_new": False}
        )
        payload = heal_task.model_dump_json(exclude_none=True)
        # the credentials go with the task, as they came: model_dump_json keeps SecretStr masked
        raw = json.loads(payload)
        raw["config"] = task.config.model_dump(mode="python")
        text = json.dumps(_reveal(raw), default=str)
        assert ledger.queue is not None
        await ledger.queue.push([text])
        logger.warning(
            "Channel %s: %s; heal task %s queued", task.channel_id, reason, heal_task.job_id
        )


def _reveal(value: Any) -> Any:
    """SecretStr values back to text, for the heal task's own message (never logged)."""
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value


def _public_config(task: Any) -> dict[str, Any]:
    """What a mapping keeps of a channel's config: never credentials or keys."""
    return {
        "url": task.config.url,
        "channel_name": task.config.channel_name,
        "navigation_details": dict(task.config.navigation_details),
    }


def _commit_message(name: str, reason: str) -> str:
    return f"{name}: {reason}"
