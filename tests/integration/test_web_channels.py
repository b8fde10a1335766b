"""Seed 003's web/API channels end to end, with real Chromium and the sandbox shop:
a new channel gets a generated fetcher (v1, committed and mapped) and later runs
without the browser; the shop changes its API and heal produces, validates and
promotes v2; a site that cannot be healed asks for a person; a 503 is retried, not
healed; login credentials open the shop and are kept nowhere; a server-rendered
catalogue gets a DOM fetcher; tasks on the shared Redis queue reach the spider
through routing and leases, and so do the heal tasks a site change queues."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from crawlers.db.state import RetryPolicy, StateDB
from crawlers.fetchers.catalog import ChannelMapping, FetcherCatalog
from crawlers.sandbox.shop import catalogue
from crawlers.sandbox.shop_server import ShopServer
from tests.conftest import read_jsonl, run_worker
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path) -> dict[str, object]:
    return {
        "HYDRA_DB_URL": f"sqlite:///{tmp_path}/state.db",
        "HYDRA_STORE_URI": f"file://{tmp_path}/store",
        "HYDRA_TOPICS_PATH": str(tmp_path / "topics"),
        "HYDRA_DEADLETTER_PATH": str(tmp_path / "dl.jsonl"),
        "HYDRA_FETCHERS_REPO": str(tmp_path / "fetchers-repo"),
    }


def _task(job: str, channel: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "channel_id": channel,
        "source_type": "api",
        "config": {"url": url},
        **extra,
    }


def _run(tmp_path: Path, task: dict[str, Any], **settings: object) -> str:
    path = tmp_path / f"{task['job_id']}.json"
    path.write_text(json.dumps(task))
    return run_worker(
        "-a", f"task=@{path}", spider="web", timeout=240, **{**_settings(tmp_path), **settings}
    )


def _statuses(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        m["message"]["job_id"]: m["message"]
        for m in read_jsonl(tmp_path / "topics" / "hydra_status.jsonl")
    }


def _items(tmp_path: Path, channel: str, job: str) -> list[dict[str, Any]]:
    files = list((tmp_path / "store").rglob(f"{channel}/{job}/items.jsonl"))
    assert len(files) == 1, files
    return read_jsonl(files[0])


def _git_log(tmp_path: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(tmp_path / "fetchers-repo"), "log", "--format=%s"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def _state(tmp_path: Path, call: Any) -> Any:
    """Run ``call(db)`` on the worker's SQLite state database."""

    async def scenario() -> Any:
        db = StateDB(f"sqlite:///{tmp_path}/state.db")
        await db.open()
        try:
            return await call(db)
        finally:
            await db.close()

    return asyncio.run(scenario())


def _fast_retries(tmp_path: Path, channel: str, heal: int = 2) -> None:
    _state(tmp_path, lambda db: db.set_retry_policy(channel, RetryPolicy(2, heal, 0.2)))


def _mapping(tmp_path: Path, channel: str) -> ChannelMapping | None:
    mapping: ChannelMapping | None = _state(
        tmp_path, lambda db: FetcherCatalog(db).mapping(channel)
    )
    return mapping


def _stored(tmp_path: Path, channel: str, job: str) -> list[str]:
    folder = tmp_path / "store" / channel / job
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_new_channel_gets_v1_then_runs_it_without_the_browser_and_heals_to_v2(
    tmp_path: Path,
) -> None:
    with ShopServer() as shop:
        _run(tmp_path, _task("j1", "ch1", shop.shop_url, is_new=True))
        first = _statuses(tmp_path)["j1"]
        assert first["status"] == "success", first
        assert first["metadata"]["items"] == 57
        names = {item["name"] for item in _items(tmp_path, "ch1", "j1")}
        assert len(names) == 57
        log = _git_log(tmp_path)
        assert len(log) == 1 and "new channel ch1" in log[0]
        module = next((tmp_path / "fetchers-repo" / "fetchers").glob("*_fetcher_v1.py"))
        assert "Bearer" not in module.read_text() or "TOKEN" in module.read_text()
        # a second channel of the same site, and a second run of the first: no browser
        _fast_retries(tmp_path, "ch1")
        pages_before = shop.stats()["per_path"].get("/shop/", 0)
        _run(tmp_path, _task("j2", "ch1", shop.shop_url))
        _run(tmp_path, _task("j3", "ch2", shop.shop_url, is_new=True))
        statuses = _statuses(tmp_path)
        assert statuses["j2"]["status"] == statuses["j3"]["status"] == "success"
        assert statuses["j2"]["metadata"]["items"] == statuses["j3"]["metadata"]["items"] == 57
        assert shop.stats()["per_path"].get("/shop/", 0) == pages_before  # the page was not opened
        assert len(_git_log(tmp_path)) == 1  # ch2 reuses v1
        # the shop moves to its v2 API: v1 breaks, a heal task follows in the same crawl
        shop.set_api_version(2)
        _run(tmp_path, _task("j4", "ch1", shop.shop_url))
        statuses = _statuses(tmp_path)
        assert statuses["j4"]["status"] == "failed"
        assert statuses["j4"]["message"].startswith("website changed: ")
        assert statuses["j4"]["metadata"]["heal_queued"] is True
        healed = statuses["j4-heal"]
        assert healed["status"] == "success", healed
        assert healed["metadata"]["heal_mode"] is True
        assert healed["metadata"]["items"] == 57
        log = _git_log(tmp_path)
        assert len(log) == 2 and "heal of v1" in log[0]
        assert sorted(p.name for p in (tmp_path / "fetchers-repo" / "fetchers").glob("*.py"))[
            -1
        ].endswith("_v2.py")
        # the other channel of v1 was moved too, and runs v2
        _run(tmp_path, _task("j5", "ch2", shop.shop_url))
        later = _statuses(tmp_path)["j5"]
        assert later["status"] == "success" and later["metadata"]["fetcher"].endswith("_v2")


def test_a_site_that_cannot_be_healed_asks_for_a_person_and_keeps_its_mappings(
    tmp_path: Path,
) -> None:
    with ShopServer() as shop:
        port = shop.port
        _run(tmp_path, _task("j1", "ch1", shop.shop_url, is_new=True))
    assert _statuses(tmp_path)["j1"]["status"] == "success"
    before = _mapping(tmp_path, "ch1")
    assert before is not None and before.fetcher.version == 1
    _fast_retries(tmp_path, "ch1", heal=2)
    # the same site, now on its v2 API with nothing in it: v1 breaks, and no data to heal from
    with ShopServer(port=port, api_version=2, products=0) as shop:
        log = _run(tmp_path, _task("j2", "ch1", shop.shop_url))
    # counted for hydra_heals_total{outcome} (the HydraHealNeedsPerson alert)
    assert "'hydra/heal/queued': 1" in log and "'hydra/heal/needs_review': 1" in log
    statuses = _statuses(tmp_path)
    failed = statuses["j2"]
    assert failed["status"] == "failed" and failed["message"].startswith("website changed: ")
    assert failed["metadata"]["heal_queued"] is True
    review = statuses["j2-heal"]
    assert review["status"] == "requires_human_review", review
    assert review["metadata"]["heal_mode"] is True
    assert "attempt 1:" in review["message"] and "attempt 2:" in review["message"]
    assert "attempt 3:" not in review["message"]
    after = _mapping(tmp_path, "ch1")
    assert after is not None and after.fetcher == before.fetcher  # untouched
    assert len(_git_log(tmp_path)) == 1  # only v1
    assert sorted(p.name for p in (tmp_path / "fetchers-repo" / "fetchers").glob("*.py")) == [
        before.fetcher.name + ".py"
    ]
    # what each attempt's browser recorded is kept with the heal job, for that person
    kept = _stored(tmp_path, "ch1", "j2-heal")
    for attempt in (1, 2):
        assert f"review/heal-{attempt}/capture.har" in kept, kept
        assert f"review/heal-{attempt}/screenshots/page-001.png" in kept, kept
    har = json.loads(
        (tmp_path / "store" / "ch1" / "j2-heal" / "review/heal-2/capture.har").read_text()
    )
    assert any("/api/v2/" in e["request"]["url"] for e in har["log"]["entries"])


def test_a_transient_503_is_retried_not_healed(tmp_path: Path) -> None:
    with ShopServer() as shop:
        _run(tmp_path, _task("j1", "ch1", shop.shop_url, is_new=True))
        _fast_retries(tmp_path, "ch1")
        shop.reset_stats()
        shop.fail_next(2)
        _run(tmp_path, _task("j2", "ch1", shop.shop_url))
        served = shop.stats()["per_status"]
        statuses = _statuses(tmp_path)
        assert set(statuses) == {"j1", "j2"}  # no heal job
        done = statuses["j2"]
        assert done["status"] == "success", done
        assert done["metadata"]["items"] == 57 and done["metadata"]["retries"] == 2
        assert done["metadata"]["heal_queued"] is False
        assert served.get("503") == 2
        assert len(_git_log(tmp_path)) == 1
        # more 503s than the channel's simple retries: the job fails, still no heal
        shop.fail_next(10)
        _run(tmp_path, _task("j3", "ch1", shop.shop_url))
    statuses = _statuses(tmp_path)
    assert set(statuses) == {"j1", "j2", "j3"}
    assert statuses["j3"]["status"] == "failed" and "503" in statuses["j3"]["message"]
    assert "website changed" not in statuses["j3"]["message"]
    assert len(_git_log(tmp_path)) == 1


def test_a_code_error_in_the_fetcher_is_healed_like_a_site_change(tmp_path: Path) -> None:
    """Someone edits v1 and breaks it: the job fails and the heal writes a working v2."""
    with ShopServer() as shop:
        _run(tmp_path, _task("j1", "ch1", shop.shop_url, is_new=True))
        module = next((tmp_path / "fetchers-repo" / "fetchers").glob("*_fetcher_v1.py"))
        broken = module.read_text() + (
            "\n\ndef _broken(self, response):\n    raise KeyError('price')\n\n\n"
            "Fetcher.parse = _broken\n"
        )
        module.write_text(broken)
        _run(tmp_path, _task("j2", "ch1", shop.shop_url))
    statuses = _statuses(tmp_path)
    assert statuses["j2"]["status"] == "failed"
    assert statuses["j2"]["message"].startswith("website changed: code error in the fetcher")
    healed = statuses["j2-heal"]
    assert healed["status"] == "success" and healed["metadata"]["fetcher"].endswith("_v2")
    assert healed["metadata"]["items"] == 57


USERNAME, PASSWORD = "shopper-7f3a", "pw-93b1c7e2"


def test_login_credentials_open_the_shop_and_never_appear_in_what_is_kept(
    tmp_path: Path,
) -> None:
    with ShopServer(login_required=True, username=USERNAME, password=PASSWORD) as shop:
        login = {"username": USERNAME, "password": PASSWORD}
        task = _task("j1", "ch1", shop.shop_url, is_new=True)
        task["config"]["login_credentials"] = login
        log = _run(tmp_path, task)
        first = _statuses(tmp_path)["j1"]
        assert first["status"] == "success", first
        assert first["metadata"]["items"] == 57
        # a later run logs in again without the browser
        task = _task("j2", "ch1", shop.shop_url)
        task["config"]["login_credentials"] = login
        log += _run(tmp_path, task)
        second = _statuses(tmp_path)["j2"]
        assert second["status"] == "success" and second["metadata"]["items"] == 57, second
    assert log.count("Channel ch1: signed in at") == 2  # each run's fetcher, over HTTP
    kept = _stored(tmp_path, "ch1", "j1")
    assert "capture/capture.har" in kept, kept  # the HAR is kept with the job...
    har = (tmp_path / "store" / "ch1" / "j1" / "capture/capture.har").read_text()
    assert "/login" in har and "***" in har  # ...recorded the login, masked
    git = subprocess.run(
        ["git", "-C", str(tmp_path / "fetchers-repo"), "log", "-p", "--all"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "fetcher_v1" in git
    texts = {"log": log, "git": git}
    for root in ("store", "topics", "fetchers-repo"):
        for path in (tmp_path / root).rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("latin-1")
    for path in tmp_path.glob("state.db*"):
        texts[str(path)] = path.read_bytes().decode("latin-1")
    for secret in (USERNAME, PASSWORD):
        leaks = [where for where, text in texts.items() if secret in text]
        assert not leaks, (secret, leaks)


def test_a_server_rendered_catalogue_gets_a_dom_fetcher(tmp_path: Path) -> None:
    with ShopServer() as shop:
        task = _task("j1", "cat1", shop.catalogue_url, is_new=True, source_type="html")
        _run(tmp_path, task)
        first = _statuses(tmp_path)["j1"]
        assert first["status"] == "success", first
        module = next((tmp_path / "fetchers-repo" / "fetchers").glob("*_fetcher_v1.py"))
        assert "DomFetcher" in module.read_text()
        shop.reset_stats()
        _run(tmp_path, _task("j2", "cat1", shop.catalogue_url, source_type="html"))
        pages = shop.stats()["per_path"]
    again = _statuses(tmp_path)["j2"]
    assert again["status"] == "success" and again["metadata"]["items"] == 57, again
    assert pages == {"/catalogue": 3}  # every page once, nothing else (no browser)
    # the same content as j1's: deduplicated, nothing stored
    assert again["metadata"]["files_unchanged"] == again["metadata"]["files_processed"] == 4
    items = _items(tmp_path, "cat1", "j1")
    expected = {(p.sku, p.name, f"${p.price:.2f}") for p in catalogue()}
    assert len(items) == 57
    assert {(i["sku"], i["name"], i["price"]) for i in items} == expected


def test_web_tasks_on_the_shared_queue_are_routed_leased_and_healed(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings: dict[str, object] = {
        **_settings(tmp_path),
        "HYDRA_REDIS_URL": redis_server.url,
        "HYDRA_IDLE_CLOSE_SECONDS": 0.5,
    }
    ftp_task = {
        "job_id": "job_ftp", "channel_id": "ch_ftp", "source_type": "ftp",
        "config": {"host": "127.0.0.1", "port": 2121, "username": "u", "password": "ftp-pw-1",
                   "remote_path": "/feed"},
    }  # fmt: skip

    def statuses() -> dict[str, dict[str, Any]]:
        messages = [json.loads(f["message"]) for _, f in redis_client.xrange("hydra:status")]
        return {m["job_id"]: m for m in messages}

    with ShopServer() as shop:
        # two new channels of one site, claimed together: one v1 for both
        redis_client.rpush(
            "hydra:fetch:tasks",
            json.dumps(ftp_task),
            json.dumps(_task("j1", "ch1", shop.shop_url, is_new=True)),
            json.dumps(_task("j2", "ch2", shop.shop_url, is_new=True)),
        )
        log = run_worker(spider="web", timeout=240, **settings)
        assert " ERROR: " not in log  # the second waited for the first's v1
        done = statuses()
        assert set(done) == {"j1", "j2"}
        for job in ("j1", "j2"):
            assert done[job]["status"] == "success", done[job]
            assert done[job]["metadata"]["items"] == 57
            assert done[job]["metadata"]["fetcher"].endswith("_v1")
        assert len(_git_log(tmp_path)) == 1
        assert redis_client.llen("{hydra:fetch:tasks}:ready:ftp") == 1  # for an ftp worker
        assert redis_client.llen("hydra:fetch:tasks") == 0
        assert redis_client.zcard("{hydra:fetch:tasks}:leases") == 0
        # the site changes: both channels fail, each failed job's heal task goes onto the
        # shared queue, and a web worker (here the same one) takes them from there: one
        # heals v1 into v2 for both channels, the other finds v2 already working
        shop.set_api_version(2)
        redis_client.rpush(
            "hydra:fetch:tasks",
            json.dumps(_task("j3", "ch1", shop.shop_url)),
            json.dumps(_task("j4", "ch2", shop.shop_url)),
        )
        log = run_worker(spider="web", timeout=240, **settings)
    assert " ERROR: " not in log
    assert "works (healed meanwhile): no new version" in log
    done = statuses()
    assert set(done) == {"j1", "j2", "j3", "j4", "j3-heal", "j4-heal"}
    for job in ("j3", "j4"):
        assert done[job]["status"] == "failed" and done[job]["message"].startswith(
            "website changed: "
        )
        healed = done[f"{job}-heal"]
        assert healed["status"] == "success" and healed["metadata"]["items"] == 57, healed
        assert healed["metadata"]["fetcher"].endswith("_v2")
    history = _git_log(tmp_path)
    assert len(history) == 2 and "heal of v1" in history[0], history
    assert redis_client.llen("{hydra:fetch:tasks}:ready:ftp") == 1
    assert redis_client.llen("hydra:fetch:tasks") == 0
    assert redis_client.zcard("{hydra:fetch:tasks}:leases") == 0
    assert redis_client.hlen("{hydra:fetch:tasks}:held") == 0
    assert redis_client.llen("{hydra:fetch:tasks}:ready") == 0
    assert redis_client.llen("hydra:deadletter") == 0
