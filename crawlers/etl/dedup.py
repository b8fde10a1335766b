"""Content dedup: a record whose content was already processed is dropped.

A content key is a 16-byte BLAKE2b digest of the task type and the extractor's
content-key values (cleaned: ``"The iPhone 15"`` and ``"iphone 15"`` are one
title). Within a process, a bounded in-memory map remembers the keys it claimed;
across processes and runs, Redis holds one key per content for the window:
``SET <prefix><digest> <owner> NX PX <window> GET``, one pipelined round trip per
batch, answered atomically, so two processors racing on the same content keep
one record.

The value is the *owner*: a 62-bit number derived from the stream entry that
claimed the content. A processor that dies after claiming, before its sink made
the rows durable, leaves its entries pending; whoever processes them again finds
its own entry's owner and keeps the record, instead of dropping it as a duplicate
of itself (which would lose it). An integer value is stored inside the key's
object by Redis: the value costs no allocation (72 bytes a key by ``MEMORY USAGE``,
about 140 with the expiry table; ``tests/unit/test_etl_dedup.py``). The window is
fixed from the first sighting (``NX``): unchanged content is processed again once
per window.

Embedded (no Redis), or with a window of 0, the in-memory map is all there is.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio

DIGEST_BYTES = 16


def content_digest(parts: Sequence[Any]) -> bytes:
    """16 bytes identifying a content (canonical JSON of ``parts``, hashed)."""
    blob = json.dumps(list(parts), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=DIGEST_BYTES).digest()


def owner_token(entry_id: str) -> int:
    """The claimant's 62-bit number (fits a Redis integer, so it is stored inline)."""
    digest = hashlib.blake2b(entry_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class ContentKeys:
    """Claims content keys for entries; a claim that loses is a duplicate."""

    def __init__(
        self,
        *,
        window_seconds: float,
        local_max_keys: int,
        prefix: str,
        client: redis.asyncio.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window_seconds
        self.local_max_keys = local_max_keys
        self.prefix = prefix.encode()
        self.client = client if window_seconds > 0 else None
        self.clock = clock
        #: digest -> (owner, monotonic expiry), oldest first (one window for all keys,
        #: so insertion order is expiry order)
        self._local: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def redis_key(self, digest: bytes) -> bytes:
        return self.prefix + digest

    async def claim(self, claims: Sequence[tuple[bytes, str]]) -> list[bool]:
        """For each ``(digest, entry_id)``: True to process it, False for a duplicate.

        Of the entries of a batch with one content, one at most is processed: the
        entry that owns the content already (its batch is being processed again),
        else the first, if the content is new (unclaimed, or its claim expired)."""
        now = self.clock()
        self._expire(now)
        results = [False] * len(claims)
        groups: dict[bytes, list[tuple[int, int]]] = {}  # digest -> [(index, owner)]
        for index, (digest, entry_id) in enumerate(claims):
            groups.setdefault(digest, []).append((index, owner_token(entry_id)))
        owners: dict[bytes, int] = {}  # digest -> its owner, where it is claimed
        unknown: list[bytes] = []
        for digest in groups:
            known = self._local.get(digest)
            if known is not None:
                owners[digest] = known[0]
            else:
                unknown.append(digest)
        if unknown and self.client is not None:
            pipe = self.client.pipeline(transaction=False)
            milliseconds = max(1, int(self.window * 1000))
            for digest in unknown:
                first_owner = groups[digest][0][1]
                pipe.set(self.redis_key(digest), first_owner, nx=True, px=milliseconds, get=True)
            answers: list[Any] = await pipe.execute()
            for digest, previous in zip(unknown, answers, strict=True):
                if previous is None:  # claimed now, for the first entry
                    self._remember(digest, groups[digest][0][1], now)
                else:
                    owners[digest] = int(previous)
        elif unknown:
            for digest in unknown:
                self._remember(digest, groups[digest][0][1], now)
        for digest, entries in groups.items():
            owner = owners.get(digest)
            if owner is None:  # new: the first entry claimed it
                results[entries[0][0]] = True
                continue
            winner = next((index for index, token in entries if token == owner), None)
            if winner is not None:
                results[winner] = True
        return results

    async def release(self, digests: Sequence[bytes]) -> None:
        """Forget claims whose rows were never stored (dead-lettered by a sink), so the
        same content is processed when it comes again."""
        for digest in digests:
            self._local.pop(digest, None)
        if self.client is not None and digests:
            await self.client.delete(*(self.redis_key(d) for d in digests))

    def __len__(self) -> int:
        return len(self._local)

    def _remember(self, digest: bytes, token: int, now: float) -> None:
        expires = now + self.window if self.window > 0 else math.inf
        self._local[digest] = (token, expires)
        self._local.move_to_end(digest)
        while len(self._local) > self.local_max_keys:
            self._local.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._local:
            digest, (_, expires) = next(iter(self._local.items()))
            if expires > now:
                return
            del self._local[digest]
