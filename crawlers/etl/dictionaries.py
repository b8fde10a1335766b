"""The dictionaries' store: files in the repository, Redis as the shared cache.

At start-up a processor seeds Redis from ``crawlers/etl/dictionaries/*.json``:
a file replaces the Redis copy only if its ``revision`` is higher, so a worker
still running an older release never downgrades a newer dictionary, and an
operator's live edit (published with a higher revision) survives restarts until
a release carries a higher one. Every change increments one version counter.

Processors keep a compiled local copy (a record costs no Redis round trip) and
ask for the counter at most every ``dictionary_check_seconds`` (one ``GET``);
only a new version costs a reload (one ``HGETALL``). A version that does not
validate is refused once, logged, and the processor keeps the copy it had.

Redis layout (one hash tag, one cluster slot)::

    {hydra:etl}:dictionaries          hash: name -> {"revision", "description", "data"}
    {hydra:etl}:dictionaries:version  integer, incremented on every change

Without Redis (embedded) the files are the dictionaries, read once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio
import redis.exceptions

from crawlers.etl.errors import EtlError
from crawlers.etl.lexicon import (
    DICTIONARY_MODELS,
    Dictionaries,
    DictionaryDocument,
    document_json,
    parse_document,
    read_files,
)
from crawlers.etl.settings import EtlSettings

logger = logging.getLogger(__name__)

#: the revision of a stored document (0 if absent or unreadable)
_REVISION_LUA = """
local function revision(name)
  local doc = redis.call('HGET', KEYS[1], name)
  if not doc then return 0 end
  local ok, parsed = pcall(cjson.decode, doc)
  if ok and type(parsed) == 'table' and tonumber(parsed['revision']) then
    return tonumber(parsed['revision'])
  end
  return 0
end
"""
#: ARGV: (name, revision, document) triples; a higher revision replaces the stored one
_SEED_LUA = (
    _REVISION_LUA
    + """
local changed = 0
for i = 1, #ARGV, 3 do
  if tonumber(ARGV[i + 1]) > revision(ARGV[i]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    changed = changed + 1
  end
end
if changed > 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('INCR', KEYS[2])
end
return changed
"""
)
#: ARGV: name, document, its revision; refused (the stored revision, negated) unless higher
_PUBLISH_LUA = (
    _REVISION_LUA
    + """
local current = revision(ARGV[1])
if tonumber(ARGV[3]) <= current then return -current end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DictionaryStore:
    """The current dictionaries of one processor, refreshed when Redis has new ones."""

    def __init__(
        self,
        settings: EtlSettings,
        client: redis.asyncio.Redis | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self.docs_key = settings.key("dictionaries")
        self.version_key = settings.key("dictionaries:version")
        self.reloads = 0
        self._files: dict[str, DictionaryDocument] = {}
        self._current: Dictionaries | None = None
        self._checked = -float("inf")
        self._refused_version: int | None = None

    @property
    def current(self) -> Dictionaries:
        if self._current is None:
            raise EtlError("the dictionaries are not loaded: call open() first")
        return self._current

    async def open(self) -> Dictionaries:
        """Read the files; with Redis, seed it (higher revisions only) and load from it."""
        self._files = await asyncio.to_thread(read_files, self.settings.dictionaries_dir)
        if self.client is None:
            self._current = Dictionaries.build(0, self._files)
        else:
            await self.seed()
            self._current = await self._load()
            self._checked = self.clock()
        return self._current

    async def seed(self) -> int:
        """Write the files' dictionaries whose revision is higher than Redis's; returns
        how many were written."""
        args: list[str | int] = []
        for name, document in self._files.items():
            args += [name, document.revision, document_json(document)]
        changed: Any = await self._redis.eval(_SEED_LUA, 2, self.docs_key, self.version_key, *args)
        if int(changed):
            logger.info("Dictionaries: %d seeded into Redis from the files", int(changed))
        return int(changed)

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload if Redis has a new version (asked at most every
        ``dictionary_check_seconds`` unless ``force``); True if reloaded. Redis errors
        and invalid dictionaries keep the current copy."""
        if self.client is None:
            return False
        now = self.clock()
        if not force and now - self._checked < self.settings.dictionary_check_seconds:
            return False
        self._checked = now
        try:
            raw = await self.client.get(self.version_key)
            if raw is None:  # flushed: seed again from the files
                await self.seed()
                raw = await self.client.get(self.version_key)
        except redis.exceptions.RedisError as exc:
            logger.warning("Dictionaries: version check failed (%s); keeping version %d",
                           exc, self.current.version)  # fmt: skip
            return False
        version = int(_text(raw)) if raw is not None else 0
        if version == self.current.version or version == self._refused_version:
            return False
        try:
            loaded = await self._load()
        except EtlError as exc:
            self._refused_version = version
            logger.error("Dictionaries: version %d refused (%s); keeping version %d",
                         version, exc, self.current.version)  # fmt: skip
            return False
        except redis.exceptions.RedisError as exc:
            logger.warning("Dictionaries: reload failed (%s)", exc)
            return False
        logger.info("Dictionaries: version %d -> %d", self.current.version, loaded.version)
        self._current = loaded
        self.reloads += 1
        return True

    async def publish(
        self, name: str, data: Mapping[str, Any], *, description: str | None = None
    ) -> int:
        """Replace one dictionary in Redis (a live edit, for every processor): its
        revision becomes the stored one + 1. Returns the new version."""
        if name not in DICTIONARY_MODELS:
            raise EtlError(f"unknown dictionary {name!r}")
        for _ in range(10):  # a concurrent edit raced ours: read its revision again
            stored = await self._redis.hget(self.docs_key, name)
            previous = parse_document(name, _text(stored)) if stored is not None else None
            document = DictionaryDocument(
                revision=(previous.revision if previous else 0) + 1,
                description=description if description is not None else (
                    previous.description if previous else ""
                ),
                data=dict(data),
            )  # fmt: skip
            document.validated(name)
            args = (name, document_json(document), document.revision)
            answer: Any = await self._redis.eval(
                _PUBLISH_LUA, 2, self.docs_key, self.version_key, *args
            )
            if int(answer) > 0:
                return int(answer)
        raise EtlError(f"dictionary {name!r}: kept changing while it was published")

    @property
    def _redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            raise EtlError("no Redis: the dictionaries are the files")
        return self.client

    async def _load(self) -> Dictionaries:
        """The version and every dictionary, read together (MULTI); a dictionary
        absent from Redis is taken from the files."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.hgetall(self.docs_key)
            raw_version, stored = await pipe.execute()
        documents = dict(self._files)
        for raw_name, raw_doc in stored.items():
            name = _text(raw_name)
            if name in DICTIONARY_MODELS:
                documents[name] = parse_document(name, _text(raw_doc))
        version = int(_text(raw_version)) if raw_version is not None else 0
        return Dictionaries.build(version, documents)
