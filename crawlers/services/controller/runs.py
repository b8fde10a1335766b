"""Runs and the state of each of their IDs, in Redis, shared by every controller.

A run is ``hydra:run:{<run_id>}`` (a hash of counters) plus
``hydra:run:{<run_id>}:ids`` (ID -> ``p`` pending, ``ok`` stored, ``f``
failed) and ``hydra:run:{<run_id>}:progress`` (its counters over time); the
shared hash tag keeps them in one Cluster slot for the Lua script that moves
IDs between states. Counters change only when an ID's state does, so an event
delivered twice never counts twice.

The regions' timeline (``hydra:regions:timeline``) is here too: like the
runs, it is a record the controller writes and the console reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

PENDING, STORED, FAILED = "p", "ok", "f"
_CHUNK = 10_000

#: KEYS: meta, ids, progress. ARGV: new state, region, now, progress cap, id...
#: -> IDs whose state changed. A progress sample is pushed at most once per
#: ``progress_every`` seconds; changes in between rewrite the newest sample, so
#: the last one is always the current state. A full series keeps every other
#: sample and doubles the interval: a long run's whole shape stays, evenly spaced.
_MARK = """
local new, region, now, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local changed = 0
for i = 5, #ARGV do
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
  local v = redis.call('HMGET', KEYS[1], 'succeeded', 'failed', 'pending',
                       'progress_at', 'progress_every')
  local sample = '{"t":' .. now .. ',"succeeded":' .. (v[1] or 0) .. ',"failed":'
                 .. (v[2] or 0) .. ',"pending":' .. (v[3] or 0) .. '}'
  local every, last = tonumber(v[5]) or 1, tonumber(v[4])
  if last and tonumber(now) - last < every and redis.call('LLEN', KEYS[3]) > 1 then
    redis.call('LSET', KEYS[3], -1, sample)
  else
    redis.call('HSET', KEYS[1], 'progress_at', now)
    if redis.call('RPUSH', KEYS[3], sample) > cap then
      local all, kept = redis.call('LRANGE', KEYS[3], 0, -1), {}
      for i = 1, #all, 2 do kept[#kept + 1] = all[i] end
      if #all % 2 == 0 then kept[#kept + 1] = all[#all] end
      redis.call('DEL', KEYS[3])
      for i = 1, #kept, 500 do
        redis.call('RPUSH', KEYS[3], unpack(kept, i, math.min(i + 499, #kept)))
      end
      redis.call('HSET', KEYS[1], 'progress_every', every * 2)
    end
  end
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return changed
"""


def run_key(run_id: str) -> str:
    return f"hydra:run:{{{run_id}}}"


class RunStore:
    """Create runs, apply workers' events to their IDs, and read their state."""

    index_key = "hydra:runs"
    #: progress samples kept per run (then thinned to half, at twice the interval)
    progress_cap = 2_000

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
            # the starting point; the first change always adds a sample after it
            first = {"t": now, "succeeded": 0, "failed": 0, "pending": len(ids)}
            pipe.rpush(f"{meta}:progress", json.dumps(first))
            pipe.zadd(self.index_key, {run_id: now})
            await pipe.execute()

    async def mark(self, run_id: str, ids: Sequence[str], state: str, region: str) -> int:
        """Move ``ids`` to ``state`` (``ok`` is final); the number that changed."""
        if not ids:
            return 0
        meta = run_key(run_id)
        changed = await self._mark(
            keys=[meta, f"{meta}:ids", f"{meta}:progress"],
            args=[state, region, time.time(), self.progress_cap, *ids],
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

    async def progress(self, run_id: str) -> list[dict[str, float]]:
        """The run's counters over time, oldest first: ``{t, succeeded, failed, pending}``."""
        raw = cast("list[str]", await self.client.lrange(f"{run_key(run_id)}:progress", 0, -1))
        samples = []
        for text in raw:
            sample = json.loads(text)
            samples.append({name: float(sample[name]) for name in _SAMPLE_FIELDS})
        return samples

    async def ids_in(self, run_id: str, state: str) -> list[str]:
        """The IDs of a run in ``state`` (for reports; scans the run's hash)."""
        found = []
        async for item_id, value in self.client.hscan_iter(f"{run_key(run_id)}:ids"):
            if value == state:
                found.append(item_id)
        return found


_SAMPLE_FIELDS = ("t", "succeeded", "failed", "pending")


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


class RegionTimeline:
    """The hydra's regrowth as it happened: quarantines, activations, workers started and
    stopped, in a capped stream (the newest ``maxlen``, about) for the console's timeline."""

    key = "hydra:regions:timeline"
    maxlen = 1_000
    fields = ("reason", "batch", "run", "in_place_of", "until", "worker")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    async def record(self, kind: str, region: str, **details: str | float | None) -> None:
        """Append one event; a failure is logged, never raised: the record must not
        change what the controller decides."""
        entry: dict[Any, Any] = {"kind": kind, "region": region}
        entry.update({k: str(v)[:500] for k, v in details.items() if k in self.fields and v})
        try:
            await self.client.xadd(self.key, entry, maxlen=self.maxlen, approximate=True)
        except RedisError as exc:
            logger.warning("Cannot record %s of region %s: %s", kind, region, exc)

    async def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` events, newest first, each with ``at`` (epoch seconds)."""
        answer = await self.client.xrevrange(self.key, count=limit)
        entries = cast("list[tuple[str, dict[str, str]]]", answer)
        return [
            {"at": int(entry_id.split("-")[0]) / 1000, **dict.fromkeys(self.fields, ""), **fields}
            for entry_id, fields in entries
        ]


def worker_text(handle: dict[str, Any] | None) -> str:
    """A worker handle for people: ``local pid 4242``, ``scrapyd http://node:6800 job ab12``."""
    if not handle:
        return ""
    if handle.get("launcher") == "local":
        return f"local pid {handle.get('pid', '?')}"
    if handle.get("launcher") == "scrapyd":
        return f"scrapyd {handle.get('node', '?')} job {handle.get('job', '?')}"
    return json.dumps(handle, sort_keys=True, default=str)
