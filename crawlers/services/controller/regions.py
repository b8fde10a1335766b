"""The hydra: which regions are active, which are quarantined, and who replaces whom.

Region state lives in the Redis hash ``hydra:regions`` (name -> JSON), so every
controller and the API see the same picture. The decisions are plain functions
of that state (:func:`replacements`), tested without Redis.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis.asyncio

from crawlers.models.regions import DEFAULT_REGION, Region

ACTIVE, QUARANTINED, IDLE = "active", "quarantined", "idle"


@dataclass
class RegionState:
    name: str
    state: str = IDLE
    quarantined_until: float | None = None
    worker: dict[str, Any] | None = None
    batches_done: int = 0
    batches_stopped: int = 0
    ids_stored: int = 0
    ids_failed: int = 0
    stopped_workers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RegionState:
        return cls(**json.loads(text))


def replacements(
    regions: list[Region], states: dict[str, RegionState], failed: str, max_active: int
) -> list[str]:
    """Up to two neighbours of ``failed`` that are neither active nor quarantined,
    within ``max_active`` (counting ``failed`` as no longer active)."""
    by_name = {region.name: region for region in regions}
    active = sum(1 for s in states.values() if s.state == ACTIVE and s.name != failed)
    room = max(0, max_active - active)
    chosen: list[str] = []
    for name in by_name[failed].neighbours:
        if len(chosen) == min(2, room):
            break
        if states[name].state == IDLE:
            chosen.append(name)
    return chosen


class RegionBook:
    """Region state in Redis; the implicit ``default`` region when none is configured."""

    key = "hydra:regions"

    def __init__(self, client: redis.asyncio.Redis, regions: list[Region]) -> None:
        self.client = client
        self.regions = regions or [Region(name=DEFAULT_REGION, start=True)]
        self.implicit = not regions
        self.by_name = {region.name: region for region in self.regions}

    async def load(self) -> dict[str, RegionState]:
        raw = cast("dict[str, str]", await self.client.hgetall(self.key))
        states = {}
        for region in self.regions:
            text = raw.get(region.name)
            states[region.name] = RegionState.from_json(text) if text else RegionState(region.name)
        return states

    async def save(self, *states: RegionState) -> None:
        if states:
            await self.client.hset(self.key, mapping={s.name: s.to_json() for s in states})

    async def initialise(self) -> dict[str, RegionState]:
        """First start: the ``start`` regions are active; later starts keep the state."""
        states = await self.load()
        if not any(s.state != IDLE or s.quarantined_until for s in states.values()):
            for region in self.regions:
                if region.start:
                    states[region.name].state = ACTIVE
            await self.save(*states.values())
        return states

    async def view(self) -> list[dict[str, Any]]:
        states = await self.load()
        now = time.time()
        return [
            {
                **asdict(states[region.name]),
                "egress": region.egress is not None,  # never the URL: it may hold credentials
                "neighbours": region.neighbours,
                "quarantine_left_seconds": max(
                    0.0, (states[region.name].quarantined_until or 0) - now
                ),
            }
            for region in self.regions
        ]
