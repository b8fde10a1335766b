"""The fetcher registry: versions in a real git repository (local and remote), and
the catalog of versions and channel mappings on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from crawlers.db.state import StateDB
from crawlers.fetchers.catalog import FetcherCatalog
from crawlers.fetchers.repository import FetcherRepository, RepositoryError, fetcher_name

pytestmark = pytest.mark.integration

V1 = '"""v1"""\n\nVERSION = 1\n'
V2 = '"""v2"""\n\nVERSION = 2\n'


def test_names_are_importable_module_names() -> None:
    assert fetcher_name("shop.example.com", 1) == "shop_example_com_fetcher_v1"
    assert fetcher_name("127.0.0.1:8080", 3) == "site_127_0_0_1_8080_fetcher_v3"
    assert fetcher_name("", 1) == "site_fetcher_v1"


def test_versions_are_committed_with_their_reason_and_loaded_by_name(tmp_path: Path) -> None:
    repo = FetcherRepository(str(tmp_path / "fetchers-repo"), tmp_path / "cache")
    repo.open()
    assert (tmp_path / "fetchers-repo" / ".git").is_dir()  # created and initialised
    one = repo.commit("shop_fetcher_v1", V1, "New channel ch1: shop v1")
    two = repo.commit("shop_fetcher_v2", V2, "Heal of v1: endpoint answered 410")
    assert repo.load("shop_fetcher_v1").VERSION == 1
    assert repo.load("shop_fetcher_v2").VERSION == 2
    assert [c.message for c in repo.history("shop_fetcher_v2")] == [two.message]
    assert repo.history("shop_fetcher_v1")[0].sha == one.sha
    # an old version stays, and can be pinned to its commit
    assert repo.load("shop_fetcher_v1", commit=one.sha).VERSION == 1
    with pytest.raises(RepositoryError, match="never rewritten"):
        repo.commit("shop_fetcher_v1", V2, "overwrite")
    with pytest.raises(RepositoryError, match="not a commit"):
        repo.source("shop_fetcher_v1", commit="HEAD; rm -rf /")
    repo.open()  # a second start-up keeps what is there
    assert repo.module_path("shop_fetcher_v2").exists()


def test_a_remote_repository_is_cloned_pushed_to_and_pulled(tmp_path: Path) -> None:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "--quiet", str(bare)], check=True)
    seed = FetcherRepository(str(tmp_path / "seed"), tmp_path / "unused")
    seed.open()
    seed.commit("README", "# fetchers\n", "start")
    subprocess.run(
        ["git", "-C", str(tmp_path / "seed"), "push", "--quiet", str(bare), "HEAD:master"],
        check=True,
    )
    subprocess.run(
        ["git", "-C", str(bare), "symbolic-ref", "HEAD", "refs/heads/master"], check=True
    )
    first = FetcherRepository(f"file://{bare}", tmp_path / "worker1")
    first.open()
    first.commit("shop_fetcher_v1", V1, "New channel ch1")
    second = FetcherRepository(f"file://{bare}", tmp_path / "worker2")
    second.open()  # another worker's start-up sees the pushed version
    assert second.load("shop_fetcher_v1").VERSION == 1
    third = FetcherRepository(f"file://{bare}", tmp_path / "worker1")
    third.commit("shop_fetcher_v2", V2, "Heal of v1")
    second.open()  # pulled at the next start-up
    assert second.source("shop_fetcher_v2") == V2


def test_a_failing_remote_names_no_credentials(tmp_path: Path) -> None:
    repo = FetcherRepository("https://user:s3cret@127.0.0.1:9/repo.git", tmp_path / "cache")
    with pytest.raises(RepositoryError) as caught:
        repo.open()
    assert "s3cret" not in str(caught.value)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> StateDB:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("postgres_database")
    state = StateDB(url)
    state.upgrade()
    return state


def test_catalog_versions_mappings_and_an_all_or_nothing_promotion(db: StateDB) -> None:
    catalog = FetcherCatalog(db)

    async def scenario() -> None:
        assert await catalog.latest("shop.test") is None
        v1 = await catalog.add_version("shop.test", "shop_test_fetcher_v1", 1)
        for channel in ("ch1", "ch2"):
            await catalog.map_channel(channel, v1, {"url": f"http://shop.test/{channel}"})
        other = await catalog.add_version("other.test", "other_test_fetcher_v1", 1)
        await catalog.map_channel("ch3", other, {})
        mapping = await catalog.mapping("ch2")
        assert mapping is not None and mapping.fetcher == v1
        assert mapping.config == {"url": "http://shop.test/ch2"}
        assert [m.channel_id for m in await catalog.channels_of(v1)] == ["ch1", "ch2"]
        v2 = await catalog.add_version("shop.test", "shop_test_fetcher_v2", 2)
        assert await catalog.latest("shop.test") == v2
        assert await catalog.promote(v1, v2) == 2
        assert [m.channel_id for m in await catalog.channels_of(v2)] == ["ch1", "ch2"]
        assert await catalog.channels_of(v1) == []
        assert (await catalog.mapping("ch3")).fetcher == other  # type: ignore[union-attr]
        await catalog.map_channel("ch1", v1, {"pinned": True})  # re-mapping is an upsert
        assert (await catalog.mapping("ch1")).fetcher == v1  # type: ignore[union-attr]

    try:
        asyncio.run(scenario())
    finally:
        db.dispose()
