"""Which fetcher versions exist and which channel runs which: seed 003's
``fetcher_details`` and ``channel_fetcher_details`` in the state database.

Moving channels to a new version is one transaction (:meth:`FetcherCatalog.promote`),
so a failed heal leaves every mapping on the old version, never half of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from crawlers.db.models import Base
from crawlers.db.state import StateDB

FETCHERS = Base.metadata.tables["fetcher_details"]
CHANNELS = Base.metadata.tables["channel_fetcher_details"]
JOBS = Base.metadata.tables["job_runs"]


@dataclass(frozen=True)
class FetcherVersion:
    id: int
    structure_id: str
    name: str
    version: int


@dataclass(frozen=True)
class ChannelMapping:
    channel_id: str
    fetcher: FetcherVersion
    config: dict[str, Any]


class FetcherCatalog:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    async def latest(self, structure_id: str) -> FetcherVersion | None:
        return await asyncio.to_thread(self._latest, structure_id)

    def _latest(self, structure_id: str) -> FetcherVersion | None:
        query = (
            select(FETCHERS)
            .where(FETCHERS.c.structure_id == structure_id)
            .order_by(FETCHERS.c.version.desc())
            .limit(1)
        )
        with self.db.transaction(write=False) as connection:
            row = connection.execute(query).first()
        return _version(row) if row is not None else None

    async def add_version(self, structure_id: str, name: str, version: int) -> FetcherVersion:
        return await asyncio.to_thread(self._add_version, structure_id, name, version)

    def _add_version(self, structure_id: str, name: str, version: int) -> FetcherVersion:
        values = {"structure_id": structure_id, "fetcher_name": name, "version": version}
        with self.db.transaction(write=True) as connection:
            new_id = connection.execute(FETCHERS.insert().values(**values)).inserted_primary_key
        assert new_id is not None
        return FetcherVersion(int(new_id[0]), structure_id, name, version)

    async def mapping(self, channel_id: str) -> ChannelMapping | None:
        return await asyncio.to_thread(self._mapping, channel_id)

    def _mapping(self, channel_id: str) -> ChannelMapping | None:
        query = (
            select(FETCHERS, CHANNELS.c.channel_id, CHANNELS.c.config_json)
            .join(CHANNELS, CHANNELS.c.fetcher_id == FETCHERS.c.id)
            .where(CHANNELS.c.channel_id == channel_id)
        )
        with self.db.transaction(write=False) as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return ChannelMapping(row.channel_id, _version(row), dict(row.config_json or {}))

    async def map_channel(
        self, channel_id: str, fetcher: FetcherVersion, config: dict[str, Any]
    ) -> None:
        await asyncio.to_thread(self._map_channel, channel_id, fetcher, config)

    def _map_channel(
        self, channel_id: str, fetcher: FetcherVersion, config: dict[str, Any]
    ) -> None:
        insert = self.db.insert(CHANNELS).values(
            channel_id=channel_id, fetcher_id=fetcher.id, config_json=config
        )
        upsert = insert.on_conflict_do_update(
            index_elements=["channel_id"],
            set_={"fetcher_id": fetcher.id, "config_json": config, "updated_at": func.now()},
        )
        with self.db.transaction(write=True) as connection:
            connection.execute(upsert)

    async def channels_of(self, fetcher: FetcherVersion) -> list[ChannelMapping]:
        return await asyncio.to_thread(self._channels_of, fetcher)

    def _channels_of(self, fetcher: FetcherVersion) -> list[ChannelMapping]:
        query = select(CHANNELS).where(CHANNELS.c.fetcher_id == fetcher.id).order_by(CHANNELS.c.id)
        with self.db.transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [ChannelMapping(r.channel_id, fetcher, dict(r.config_json or {})) for r in rows]

    async def promote(self, old: FetcherVersion, new: FetcherVersion) -> int:
        """Every channel of ``old`` moves to ``new`` at once; the number moved."""
        return await asyncio.to_thread(self._promote, old, new)

    def _promote(self, old: FetcherVersion, new: FetcherVersion) -> int:
        statement = (
            update(CHANNELS).where(CHANNELS.c.fetcher_id == old.id).values(fetcher_id=new.id)
        )
        with self.db.transaction(write=True) as connection:
            return int(connection.execute(statement).rowcount)

    async def last_failure(self, channel_id: str) -> str | None:
        """The message of the channel's latest failed job: why a heal was asked for."""
        return await asyncio.to_thread(self._last_failure, channel_id)

    def _last_failure(self, channel_id: str) -> str | None:
        query = (
            select(JOBS.c.message)
            .where((JOBS.c.channel_id == channel_id) & (JOBS.c.status == "failed"))
            .order_by(JOBS.c.updated_at.desc(), JOBS.c.id.desc())
            .limit(1)
        )
        with self.db.transaction(write=False) as connection:
            row = connection.execute(query).first()
        return str(row[0])[:300] if row is not None else None

    async def last_good_items(self, channel_id: str) -> int | None:
        """Items of the channel's latest successful job (``metadata.items``), for the
        change detector and heal validation."""
        return await asyncio.to_thread(self._last_good_items, channel_id)

    def _last_good_items(self, channel_id: str) -> int | None:
        query = (
            select(JOBS.c.metadata_json)
            .where((JOBS.c.channel_id == channel_id) & (JOBS.c.status == "success"))
            .order_by(JOBS.c.updated_at.desc(), JOBS.c.id.desc())
            .limit(1)
        )
        with self.db.transaction(write=False) as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        items = (row[0] or {}).get("items")
        return int(items) if isinstance(items, int) else None


def _version(row: Any) -> FetcherVersion:
    return FetcherVersion(int(row.id), row.structure_id, row.fetcher_name, int(row.version))
