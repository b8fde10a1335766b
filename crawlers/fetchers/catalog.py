"""Which fetcher versions exist and which channel runs which: seed 003's
``fetcher_details`` and ``channel_fetcher_details`` in the state database.

Moving channels to a new version is one transaction (:meth:`FetcherCatalog.promote`),
so a failed heal leaves every mapping on the old version, never half of them.

A heal job that asks for a person keeps its refused candidates (source, target
version, problems) in its own ``job_runs.metadata_json`` under ``heal_candidates``;
the person's decision goes beside them under ``review`` (:meth:`FetcherCatalog.decide`),
so no table is needed for either.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from crawlers.db.models import Base
from crawlers.db.state import StateDB

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

FETCHERS = Base.metadata.tables["fetcher_details"]
CHANNELS = Base.metadata.tables["channel_fetcher_details"]
JOBS = Base.metadata.tables["job_runs"]
#: ``job_runs.metadata_json`` keys of a heal job: its refused candidates, the decision
CANDIDATES_KEY = "heal_candidates"
REVIEW_KEY = "review"


class ReviewClosed(RuntimeError):
    """The review cannot take this decision: decided already, not a review, or the
    candidate's version number was taken meanwhile."""


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
        with self.db.transaction(write=True) as connection:
            return _move(connection, old.id, new.id)

    async def keep_candidate(self, job_id: str, candidate: dict[str, Any]) -> None:
        """Add a refused heal candidate to its job's metadata, for the person who reviews."""
        await asyncio.to_thread(self._keep_candidate, job_id, candidate)

    def _keep_candidate(self, job_id: str, candidate: dict[str, Any]) -> None:
        with self.db.transaction(write=True) as connection:
            metadata = _job_metadata(connection, job_id)
            if metadata is None:
                return
            kept = [*metadata.get(CANDIDATES_KEY, []), candidate]
            connection.execute(
                update(JOBS)
                .where(JOBS.c.job_id == job_id)
                .values(metadata_json={**metadata, CANDIDATES_KEY: kept})
            )

    async def decide(
        self, job_id: str, decision: dict[str, Any], new: tuple[FetcherVersion, str, int] | None
    ) -> int:
        """Record a person's decision on a review; with ``new`` = (old version, candidate
        name, candidate version), also add the candidate's version and move every channel
        of the old one to it, all in one transaction. The number of channels moved."""
        return await asyncio.to_thread(self._decide, job_id, decision, new)

    def _decide(
        self, job_id: str, decision: dict[str, Any], new: tuple[FetcherVersion, str, int] | None
    ) -> int:
        moved = 0
        with self.db.transaction(write=True) as connection:
            row = connection.execute(
                select(JOBS.c.status, JOBS.c.metadata_json)
                .where(JOBS.c.job_id == job_id)
                .with_for_update()  # PostgreSQL: two people deciding at once wait in turn
            ).first()
            if row is None or row.status != "requires_human_review":
                raise ReviewClosed(f"job {job_id} is not waiting for a review")
            metadata = dict(row.metadata_json or {})
            if metadata.get(REVIEW_KEY):
                raise ReviewClosed(f"job {job_id} was decided already")
            if new is not None:
                old, name, version = new
                taken = connection.execute(
                    select(FETCHERS.c.id).where(
                        (FETCHERS.c.structure_id == old.structure_id)
                        & (FETCHERS.c.version == version)
                    )
                ).first()
                if taken is not None:
                    raise ReviewClosed(f"version {version} of {old.structure_id} exists already")
                values = {
                    "structure_id": old.structure_id,
                    "fetcher_name": name,
                    "version": version,
                }
                key = connection.execute(FETCHERS.insert().values(**values)).inserted_primary_key
                assert key is not None
                moved = _move(connection, old.id, int(key[0]))
            record = {**decision, "moved": moved}
            connection.execute(
                update(JOBS)
                .where(JOBS.c.job_id == job_id)
                .values(metadata_json={**metadata, REVIEW_KEY: record})
            )
        return moved

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


def _move(connection: Connection, old_id: int, new_id: int) -> int:
    statement = update(CHANNELS).where(CHANNELS.c.fetcher_id == old_id).values(fetcher_id=new_id)
    return int(connection.execute(statement).rowcount)


def _job_metadata(connection: Connection, job_id: str) -> dict[str, Any] | None:
    query = select(JOBS.c.metadata_json).where(JOBS.c.job_id == job_id).with_for_update()
    row = connection.execute(query).first()
    return None if row is None else dict(row[0] or {})


def _version(row: Any) -> FetcherVersion:
    return FetcherVersion(int(row.id), row.structure_id, row.fetcher_name, int(row.version))
