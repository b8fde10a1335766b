"""The scheduler's streams: job status in, external triggers in, config changes between replicas.

With ``HYDRA_REDIS_URL`` (:class:`RedisFeeds`) they are Redis Streams. Status
events and triggers are read through one consumer group shared by every
replica, so each entry is handled once, and acknowledged only after it was
applied; an entry a dead replica held is claimed by another after
:data:`CLAIM_IDLE_MS`. Config changes are read by every replica (no group).

Embedded (:class:`LocalFeeds`), status events are the JSON-lines topic file
the crawls append to; there are no other replicas to tell about config
changes, and no trigger stream (the webhook remains).

Every read is non-blocking: the scheduler polls on its tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from crawlers.config import HydraConfig, project_path
from crawlers.models.deadletter import DeadLetterEntry
from crawlers.topics.files import JsonLinesTopics

logger = logging.getLogger(__name__)
GROUP = "hydra-scheduler"
#: an entry a replica read but did not acknowledge this long is taken over
CLAIM_IDLE_MS = 30_000
#: entries handled per stream and tick
BATCH = 500
#: config-change entries kept on the topic
CONFIG_TOPIC_LENGTH = 10_000


@dataclass(frozen=True)
class Entry:
    """One stream entry: ``raw`` is the JSON message, ``id`` acknowledges it."""

    id: str
    raw: str


class Feeds(Protocol):
    async def open(self) -> None: ...

    async def status(self) -> list[Entry]:
        """Job status events not handled yet."""

    async def triggers(self) -> list[Entry]:
        """Trigger messages not handled yet."""

    async def done(self, stream: str, entries: list[Entry]) -> None:
        """Acknowledge handled entries of ``stream`` (``status`` or ``triggers``)."""

    async def publish_config(self, name: str, version: int) -> None:
        """Tell the other replicas that task ``name`` changed."""

    async def config_changes(self) -> list[str]:
        """Names of tasks another replica changed since the last call."""

    async def dead_letter(self, source: str, raw: str, error: str) -> None: ...

    async def close(self) -> None: ...


class RedisFeeds:
    def __init__(self, config: HydraConfig, consumer: str) -> None:
        self.config = config
        self.consumer = consumer
        self.keys = {
            "status": config.job_status_stream,
            "triggers": config.scheduler_trigger_stream,
        }
        self._client: redis.asyncio.Redis | None = None
        self._config_cursor = "$"

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("feeds used before open()")
        return self._client

    async def open(self) -> None:
        self._client = redis.asyncio.Redis.from_url(self.config.redis_url, decode_responses=True)
        for key in self.keys.values():
            try:
                await self.client.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        # changes made before this replica started are in the database it loads
        last: Any = await self.client.xrevrange(self.config.scheduler_config_topic, count=1)
        self._config_cursor = str(last[0][0]) if last else "0"

    async def status(self) -> list[Entry]:
        return await self._read("status")

    async def triggers(self) -> list[Entry]:
        return await self._read("triggers")

    async def _read(self, stream: str) -> list[Entry]:
        key = self.keys[stream]
        claimed: Any = await self.client.xautoclaim(
            key, GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=BATCH
        )
        entries = [_entry(item) for item in claimed[1] if item and item[1] is not None]
        answer: Any = await self.client.xreadgroup(GROUP, self.consumer, {key: ">"}, count=BATCH)
        for _stream, items in answer or []:
            entries += [_entry(item) for item in items]
        return entries

    async def done(self, stream: str, entries: list[Entry]) -> None:
        if entries:
            await self.client.xack(self.keys[stream], GROUP, *[entry.id for entry in entries])

    async def publish_config(self, name: str, version: int) -> None:
        message = json.dumps({"name": name, "version": version, "by": self.consumer})
        await self.client.xadd(
            self.config.scheduler_config_topic,
            {"message": message},
            maxlen=CONFIG_TOPIC_LENGTH,
            approximate=True,
        )

    async def config_changes(self) -> list[str]:
        topic = self.config.scheduler_config_topic
        answer: Any = await self.client.xread({topic: self._config_cursor}, count=BATCH)
        names: list[str] = []
        for _stream, items in answer or []:
            for entry_id, fields in items:
                self._config_cursor = entry_id
                try:
                    change = json.loads(fields.get("message", ""))
                except ValueError:
                    continue
                if isinstance(change, dict) and change.get("by") != self.consumer:
                    names.append(str(change.get("name", "")))
        return [name for name in names if name]

    async def dead_letter(self, source: str, raw: str, error: str) -> None:
        entry = _dead_letter(self.config, source, raw, error, self.consumer)
        await self.client.rpush(self.config.deadletter_key, entry.model_dump_json())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _entry(item: Any) -> Entry:
    entry_id, fields = item
    return Entry(str(entry_id), str((fields or {}).get("message", "")))


class LocalFeeds:
    """Embedded: reads the status topic file the local crawls append to."""

    def __init__(self, config: HydraConfig, consumer: str) -> None:
        self.config = config
        self.consumer = consumer
        self.path = JsonLinesTopics(project_path(config.topics_path)).path(config.job_status_stream)
        self._offset: int | None = None

    async def open(self) -> None:
        # events of jobs that ended while no scheduler ran are old news: start at the end
        self._offset = await asyncio.to_thread(_size, self.path)

    async def status(self) -> list[Entry]:
        if self._offset is None:
            await self.open()
        assert self._offset is not None
        start = self._offset
        lines, self._offset = await asyncio.to_thread(_read_lines, self.path, start)
        entries = []
        for number, line in enumerate(lines):
            try:
                wrapped = json.loads(line)
                raw = json.dumps(wrapped["message"])
            except (ValueError, KeyError, TypeError):
                raw = line
            entries.append(Entry(f"{start}-{number}", raw))
        return entries

    async def triggers(self) -> list[Entry]:
        return []

    async def done(self, stream: str, entries: list[Entry]) -> None:
        return None

    async def publish_config(self, name: str, version: int) -> None:
        return None  # one replica: the change is already applied where it was made

    async def config_changes(self) -> list[str]:
        return []

    async def dead_letter(self, source: str, raw: str, error: str) -> None:
        entry = _dead_letter(self.config, source, raw, error, self.consumer)
        path = project_path(self.config.deadletter_path)
        await asyncio.to_thread(_append, path, entry.model_dump_json() + "\n")

    async def close(self) -> None:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Whole lines after ``offset`` (a line still being written waits for the next read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(4 << 20)
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", "replace").splitlines()
    return [line for line in lines if line.strip()], offset + end


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def _dead_letter(
    config: HydraConfig, source: str, raw: str, error: str, worker: str
) -> DeadLetterEntry:
    return DeadLetterEntry.build(
        reason="invalid_message",
        error=error,
        source=source,
        payload=raw,
        max_bytes=config.max_message_bytes,
        redactor=config.redactor,
        worker=worker,
    )


def build_feeds(config: HydraConfig, consumer: str) -> Feeds:
    if config.redis_url:
        return RedisFeeds(config, consumer)
    return LocalFeeds(config, consumer)
