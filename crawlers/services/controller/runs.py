"""Runs and the state of each of their IDs, in Redis, shared by every controller.

A run is ``hydra:run:{<run_id>}`` (a hash of counters) plus
``hydra:run:{<run_id>}:ids`` (ID -> ``p`` pending, ``ok`` stored, ``f``
failed); the shared hash tag keeps both in one Cluster slot for the Lua
script that moves IDs between states. Counters change only when an ID's state
does, so an event delivered twice never counts twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio

PENDING, STORED, FAILED = "p", "ok", "f"
_CHUNK = 10_000

#: KEYS: meta, ids. ARGV: new state, region, now, id... -> IDs whose state changed
_MARK = """
local new, region, now = ARGV[1], ARGV[2], ARGV[3]
local changed = 0
for i = 4, #ARGV do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if current and current ~= new and current ~= 'ok' then
    redis.call('HSET', KEYS[2], ARGV[i], new)
    if current == 'p' then redis.call('HINCRBY', KEYS[1], 'pending', -1)
    else redis.call('HINCRBY', KEYS[1], 'failed', -1) end
    if new == 'ok' then redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
    else redis.call('HINCRBY', KEYS[1], 'failed', 1) end
    changed = changed + 1
  end
end
if changed > 0 then
  local field = (new == 'ok') and 'stored' or 'failed'
  redis.call('HINCRBY', KEYS[1], 'region:' .. region .. ':' .. field, changed)
  if tonumber(redis.call('HGET', KEYS[1], 'pending')) <= 0
      and redis.call('HGET', KEYS[1], 'status') == 'running' then
    redis.call('HSET', KEYS[1], 'status', 'finished', 'finished_at', now)
  end
end
return changed
"""


def run_key(run_id: str) -> str:
    return f"hydra:run:{{{run_id}}}"


class RunStore:
    """Create runs, apply workers' events to their IDs, and read their state."""

    index_key = "hydra:runs"

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._mark = client.register_script(_MARK)

    async def create(self, run_id: str, ids: Sequence[str], batches: int) -> None:
        meta = run_key(run_id)
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                pipe.hset(f"{meta}:ids", mapping=dict.fromkeys(chunk, PENDING))
            pipe.hset(
                meta,
                mapping={
                    "run_id": run_id,
                    "ids": len(ids),
                    "pending": len(ids),
                    "succeeded": 0,
                    "failed": 0,
                    "batches": batches,
                    "dispatched": 0,
                    "stops": 0,
                    "status": "running",
                    "created_at": now,
                },
            )
            pipe.zadd(self.index_key, {run_id: now})
            await pipe.execute()

    async def mark(self, run_id: str, ids: Sequence[str], state: str, region: str) -> int:
        """Move ``ids`` to ``state`` (``ok`` is final); the number that changed."""
        if not ids:
            return 0
        meta = run_key(run_id)
        changed = await self._mark(
            keys=[meta, f"{meta}:ids"], args=[state, region, time.time(), *ids]
        )
        return int(changed)

    async def count(self, run_id: str, field: str, amount: int = 1) -> None:
        meta = run_key(run_id)
        if await self.client.exists(meta):
            await self.client.hincrby(meta, field, amount)

    async def get(self, run_id: str) -> dict[str, Any] | None:
        raw = cast("dict[str, str]", await self.client.hgetall(run_key(run_id)))
        return _view(raw) if raw else None

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        run_ids = cast("list[str]", await self.client.zrevrange(self.index_key, 0, limit - 1))
        runs = [await self.get(run_id) for run_id in run_ids]
        return [run for run in runs if run is not None]

    async def ids_in(self, run_id: str, state: str) -> list[str]:
        """The IDs of a run in ``state`` (for reports; scans the run's hash)."""
        found = []
        async for item_id, value in self.client.hscan_iter(f"{run_key(run_id)}:ids"):
            if value == state:
                found.append(item_id)
        return found


def _view(raw: dict[str, str]) -> dict[str, Any]:
    regions: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        if field.startswith("region:"):
            _, name, what = field.split(":", 2)
            regions.setdefault(name, {})[what] = int(value)
    return {
        "run_id": raw["run_id"],
        "status": raw["status"],
        "ids": int(raw["ids"]),
        "succeeded": int(raw["succeeded"]),
        "failed": int(raw["failed"]),
        "pending": int(raw["pending"]),
        "batches": int(raw["batches"]),
        "dispatched": int(raw["dispatched"]),
        # batch attempts so far: first dispatches and redispatched remainders
        "attempts": int(raw["dispatched"]),
        "stops": int(raw["stops"]),
        "created_at": float(raw["created_at"]),
        "finished_at": float(raw["finished_at"]) if "finished_at" in raw else None,
        "regions": regions,
    }
