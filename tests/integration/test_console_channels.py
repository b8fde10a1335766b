"""The console's channels and heal reviews through HTTP, on real parts: a SQLite state
database, a git fetchers repository, a local store folder with a heal job's kept files.

The review is made by :func:`crawlers.fetchers.heal.heal` itself (a workshop whose
candidates find no items), so what a refused candidate keeps is what the console shows
and approves."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crawlers.config import HydraConfig
from crawlers.db.state import RetryPolicy, StateDB
from crawlers.fetchers.catalog import FetcherCatalog, FetcherVersion
from crawlers.fetchers.heal import heal
from crawlers.fetchers.repository import FetcherRepository, fetcher_name
from crawlers.fetchers.workshop import LoadedFetcher, structure_id
from crawlers.models.fetch_task import WebFetchTask
from crawlers.services.scheduler.app import create_app
from crawlers.services.scheduler.service import Scheduler
from tests.consolefixtures import console_config, console_sign_in

pytestmark = pytest.mark.integration
OPERATOR, READER = "op-channels-key-1", "ro-channels-key-1"
XSS = "<script>alert('x')</script>"
SHOP, OTHER = "https://shop.example.com/", "https://other.example.org/"
REVIEW = "j2-heal"
MODULE = '''"""{name}"""


class Recipe:
    fields = ["title"]
    id_field = "id"


class Fetcher:
    RECIPE = Recipe
    VERSION = {version}
'''
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class Workshop:
    """The parts of ``FetcherWorkshop`` heal uses; generation writes a module without a
    browser, and every version (the mapped one too) finds no items on the changed site."""

    def __init__(self, catalog: FetcherCatalog, config: HydraConfig, repo: FetcherRepository):
        self.catalog, self.config, self.repo = catalog, config, repo

    def load(self, mapping: Any) -> LoadedFetcher:
        name = mapping.fetcher.name
        return LoadedFetcher(name, mapping.fetcher, self.repo.load(name).Fetcher)

    async def generate(
        self, task: Any, workdir: Path, *, version: int, reason: str
    ) -> tuple[str, str]:
        name = fetcher_name(structure_id(task.config.url), version)
        return MODULE.format(name=name, version=version), name


async def _no_items(fetcher: type[Any], task: Any) -> list[dict[str, Any]]:
    return []


def _config(tmp_path: Path) -> HydraConfig:
    return console_config(
        tmp_path, OPERATOR, READER, HYDRA_STORE_URI=f"file://{tmp_path}/store",
        HYDRA_FETCHERS_REPO=str(tmp_path / "fetchers-repo"),
        HYDRA_FETCHERS_CACHE=str(tmp_path / "fetchers-cache"),
    )  # fmt: skip


async def _seed(config: HydraConfig, tmp_path: Path) -> None:
    """v1 of two sites, three channels, their jobs, and a heal job that asks for a person."""
    db = StateDB(config.db_url)
    await db.open()
    catalog = FetcherCatalog(db)
    repo = FetcherRepository.from_config(config)
    repo.open()
    versions: dict[str, FetcherVersion] = {}
    for url in (SHOP, OTHER):
        site = structure_id(url)
        name = fetcher_name(site, 1)
        repo.commit(name, MODULE.format(name=name, version=1), f"{name}: new channel of {site}")
        versions[url] = await catalog.add_version(site, name, 1)
    for channel, url in (("ch1", SHOP), ("ch2", SHOP), ("ch3", OTHER)):
        public = {
            "url": url + ("?token=tok-s3cret" if channel == "ch3" else ""),
            "channel_name": channel,
        }
        await catalog.map_channel(channel, versions[url], public)
    jobs = [
        ("j1", "ch1", "success", "12 items in 3 files"),
        ("j2", "ch1", "failed", f"website changed: HTTP 410 {XSS} (heal task queued)"),
        ("k1", "ch3", "success", "4 items"),
    ]
    for job_id, channel, status, message in jobs:
        await db.start_job(job_id=job_id, channel_id=channel, source_type="api", metadata={})
        await db.finish_job(job_id=job_id, status=status, message=message, metadata={})
    await db.start_job(
        job_id=REVIEW, channel_id="ch1", source_type="api", metadata={"heal_mode": True}
    )
    task = WebFetchTask.model_validate(
        {"job_id": REVIEW, "channel_id": "ch1", "source_type": "api", "config": {"url": SHOP}}
    )
    policy = RetryPolicy(max_simple_retries=0, max_heal_retries=2, retry_delay_seconds=0)
    outcome = await heal(
        Workshop(catalog, config, repo), task, policy, tmp_path / "work", _no_items
    )
    assert outcome.review and len(outcome.reasons) == 4  # 2 attempts, 2 channels each
    await db.finish_job(
        job_id=REVIEW, status="requires_human_review",
        message="requires_human_review: " + "; ".join(outcome.reasons),
        metadata={"heal_mode": True, "fetcher": ""},
    )  # fmt: skip
    await db.close()
    # what the web spider keeps of the heal job (local store), and things that are not its
    job = tmp_path / "store" / "ch1" / REVIEW
    for attempt in (1, 2):
        folder = job / "review" / f"heal-{attempt}"
        (folder / "screenshots").mkdir(parents=True)
        (folder / "capture.har").write_text('{"log": {"entries": [], "pw": "hunter2"}}')
        (folder / "screenshots" / "page-001.png").write_bytes(PNG)
    (job / "items.jsonl").write_text("{}\n")
    (tmp_path / "outside.har").write_text('{"secret": "outside"}')
    (job / "review" / "heal-2" / "leak.har").symlink_to(tmp_path / "outside.har")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[TestClient, HydraConfig]]:
    config = _config(tmp_path)
    asyncio.run(_seed(config, tmp_path))
    scheduler = Scheduler(config, StateDB(config.db_url))
    with TestClient(create_app(config, scheduler)) as client:
        yield client, config


_sign_in = console_sign_in


def _mappings(client: TestClient) -> dict[str, str]:
    async def read() -> dict[str, str]:
        catalog = FetcherCatalog(client.app.state.console.scheduler.db)  # type: ignore[attr-defined]
        found = {}
        for channel in ("ch1", "ch2", "ch3"):
            mapping = await catalog.mapping(channel)
            assert mapping is not None
            found[channel] = mapping.fetcher.name
        return found

    return client.portal.call(read)  # type: ignore[union-attr]


def _git_log(config: HydraConfig) -> list[str]:
    repo = FetcherRepository.from_config(config)
    out = subprocess.run(
        ["git", "-C", str(repo.path), "log", "--format=%s"], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


SHOP_V1, SHOP_V2 = "example_com_fetcher_v1", "example_com_fetcher_v2"
OTHER_V1 = "example_org_fetcher_v1"
BEFORE = {"ch1": SHOP_V1, "ch2": SHOP_V1, "ch3": OTHER_V1}


def test_channels_show_their_fetcher_last_job_versions_and_history(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, _ = parts
    _sign_in(client, READER)
    listing = client.get("/ui/channels").text
    rows = dict(re.findall(r'<tr data-channel="([^"]+)">(.*?)</tr>', listing, re.S))
    assert set(rows) == {"ch1", "ch2", "ch3"}
    assert SHOP_V1 in rows["ch1"] and "v1" in rows["ch1"] and REVIEW in rows["ch1"]
    assert "requires_human_review" in rows["ch1"]
    assert OTHER_V1 in rows["ch3"] and "k1" in rows["ch3"] and "state-success" in rows["ch3"]
    assert "state-success" not in rows["ch2"]  # no jobs yet
    page = client.get("/ui/channels/ch1").text
    assert f'id="fetcher">{SHOP_V1}<' in page and 'id="version">v1<' in page
    assert f"{SHOP_V1}: new channel of example.com" in page  # the commit message
    jobs = re.findall(r'<tr data-job="([^"]+)">', page)
    assert jobs == [REVIEW, "j2", "j1"]
    assert "HTTP 410" in page and XSS not in page and "&lt;script&gt;" in page
    assert f'href="/ui/reviews/{REVIEW}"' in page
    assert client.get("/ui/channels/nope").status_code == 404
    other = client.get("/ui/channels/ch3").text  # a token in the channel's URL is masked
    assert "tok-s3cret" not in other and f"{OTHER}?token=***" in other


def test_a_review_shows_its_reasons_candidates_har_link_and_screenshots(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, _ = parts
    _sign_in(client, READER)
    listing = client.get("/ui/reviews").text
    assert re.findall(r'<tr data-job="([^"]+)">', listing) == [REVIEW]
    page = client.get(f"/ui/reviews/{REVIEW}").text
    reasons = re.findall(r"<li>(attempt \d: [^<]*)</li>", page)
    assert reasons == [
        f"attempt {n}: channel {channel}: no items" for n in (1, 2) for channel in ("ch1", "ch2")
    ]
    assert re.findall(r'data-attempt="(\d)"', page) == ["1", "2"]
    assert SHOP_V2 in page and "Recipe" in page  # the candidate's code, as text
    assert f'href="/ui/reviews/{REVIEW}/files/heal-1/capture.har" download' in page
    assert f'<img src="/ui/reviews/{REVIEW}/files/heal-2/screenshots/page-001.png"' in page
    assert "hunter2" not in page  # the HAR is never shown inline
    assert "leak.har" not in page  # a symlink out of the folder is not listed
    # a reader sees the buttons disabled
    assert re.search(r'id="reject" class="danger" disabled', page)
    assert re.search(r'class="approve" disabled', page)
    assert client.get("/ui/reviews/j1").status_code == 404  # not a review


def test_review_files_are_served_only_from_the_reviews_own_folder(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, _ = parts
    _sign_in(client, READER)
    base = f"/ui/reviews/{REVIEW}/files"
    har = client.get(f"{base}/heal-1/capture.har")
    assert har.status_code == 200 and har.json()["log"]["pw"] == "hunter2"
    assert har.headers["content-disposition"].startswith("attachment")
    assert har.headers["content-type"].startswith("application/json")
    image = client.get(f"{base}/heal-1/screenshots/page-001.png")
    assert image.status_code == 200 and image.content == PNG
    assert image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    refused = [
        f"{base}/..%2Fitems.jsonl",
        f"{base}/heal-1/..%2F..%2F..%2F..%2Foutside.har",
        f"{base}/%2E%2E/%2E%2E/%2E%2E/%2E%2E/outside.har",
        f"{base}/%2F{Path.cwd()}/README.md",
        f"{base}/heal-2/leak.har",  # a symlink out of the folder
        f"{base}/heal-1/nothing.png",
        "/ui/reviews/j1/files/heal-1/capture.har",  # not a review
    ]
    for path in refused:
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "not served" in answer.text or "no such review" in answer.text, answer.text
        assert "outside" not in answer.text and "hunter2" not in answer.text


def test_approving_a_candidate_promotes_it_for_every_channel_of_the_old_version(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, config = parts
    token = _sign_in(client, OPERATOR)
    assert _mappings(client) == BEFORE
    answer = client.post(
        f"/ui/reviews/{REVIEW}/approve", data={"attempt": "2", "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    assert _mappings(client) == {"ch1": SHOP_V2, "ch2": SHOP_V2, "ch3": OTHER_V1}
    log = _git_log(config)
    assert log[0].startswith(f"{SHOP_V2}: heal of v1") and "approved in the console" in log[0]
    module = FetcherRepository.from_config(config).module_path(SHOP_V2)
    assert "VERSION = 2" in module.read_text()
    page = client.get(answer.headers["location"]).text
    assert 'id="decision">approved<' in page and "2 channel(s) moved" in page
    assert "<tr data-job" not in client.get("/ui/reviews").text  # decided: off the queue
    assert 'id="version">v2<' in client.get("/ui/channels/ch2").text
    again = client.post(f"/ui/reviews/{REVIEW}/reject", data={"csrf_token": token})
    assert again.status_code == 409 and "decided already" in again.text
    assert _mappings(client) == {"ch1": SHOP_V2, "ch2": SHOP_V2, "ch3": OTHER_V1}


def test_rejecting_keeps_every_mapping_and_commits_nothing(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, config = parts
    token = _sign_in(client, OPERATOR)
    log = _git_log(config)
    answer = client.post(
        f"/ui/reviews/{REVIEW}/reject", data={"csrf_token": token}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert _mappings(client) == BEFORE
    assert _git_log(config) == log
    assert 'id="decision">rejected<' in client.get(answer.headers["location"]).text
    assert "<tr data-job" not in client.get("/ui/reviews").text
    late = client.post(f"/ui/reviews/{REVIEW}/approve", data={"attempt": "1", "csrf_token": token})
    assert late.status_code == 409 and _mappings(client) == BEFORE


def test_a_reader_or_a_missing_csrf_token_changes_nothing(
    parts: tuple[TestClient, HydraConfig],
) -> None:
    client, config = parts
    log = _git_log(config)
    reader_token = _sign_in(client, READER)
    for action in ("approve", "reject"):
        refused = client.post(
            f"/ui/reviews/{REVIEW}/{action}", data={"attempt": "1", "csrf_token": reader_token}
        )
        assert refused.status_code == 403 and "read-only" in refused.text
    _sign_in(client, OPERATOR)
    for action in ("approve", "reject"):
        assert (
            client.post(f"/ui/reviews/{REVIEW}/{action}", data={"attempt": "1"}).status_code == 403
        )
    assert _mappings(client) == BEFORE and _git_log(config) == log
    assert re.findall(r'<tr data-job="([^"]+)">', client.get("/ui/reviews").text) == [REVIEW]
