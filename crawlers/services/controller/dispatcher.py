"""Spread batches over the active regions' queues, at a steady rate.

New runs' batches and remainders taken back from stopped regions all wait on
one lease queue (``hydra:dispatch``); the dispatcher claims from it, pushes
each batch to the next active region (round robin over the regions active
*now*) and acks. A controller that dies mid-dispatch loses nothing: its leases
expire and the next one dispatches them (a batch may then go out twice, which
the per-ID state and the sinks' row keys absorb).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import ValidationError

from crawlers.config import HydraConfig
from crawlers.models import DeadLetterEntry, PriceBatch, validation_error_text
from crawlers.queues.base import Acknowledgement
from crawlers.queues.redis import RedisLeaseQueue

logger = logging.getLogger(__name__)

DISPATCH_KEY = "hydra:dispatch"


class Dispatcher:
    def __init__(self, config: HydraConfig, regions: Sequence[str], worker_id: str) -> None:
        def queue(key: str) -> RedisLeaseQueue:
            return RedisLeaseQueue(
                config.redis_url,
                key,
                deadletter_key=config.deadletter_key,
                lease_seconds=max(config.queue_lease_seconds, 30.0),
                worker_id=worker_id,
            )

        self.pending = queue(DISPATCH_KEY)
        self.regions = {name: queue(config.region_queue_key(name)) for name in regions}
        self._turn = 0

    async def open(self) -> None:
        for queue in (self.pending, *self.regions.values()):
            await queue.open()

    async def close(self) -> None:
        for queue in (self.pending, *self.regions.values()):
            await queue.close()

    async def submit(self, payloads: Sequence[str]) -> None:
        await self.pending.push(payloads)

    async def dispatch(self, active: Sequence[str], limit: int) -> list[tuple[str, PriceBatch]]:
        """Up to ``limit`` waiting batches onto the ``active`` regions' queues."""
        if not active or limit <= 0:
            return []
        claimed = await self.pending.claim(limit)
        sent: list[tuple[str, PriceBatch]] = []
        acks = []
        for delivery in claimed.deliveries:
            try:
                batch = PriceBatch.model_validate_json(delivery.payload)
            except ValidationError as exc:  # only our own API writes here: say so loudly
                logger.error("Dead-lettering an invalid batch from the dispatch queue: %s", exc)
                entry = DeadLetterEntry.build(
                    reason="invalid_message",
                    error=validation_error_text(exc),
                    source=DISPATCH_KEY,
                    payload=delivery.payload,
                    kind="price_batch",
                ).model_dump_json()
                acks.append(Acknowledgement(delivery.lease_id, deadletter=[entry]))
                continue
            region = active[self._turn % len(active)]
            self._turn += 1
            routed = batch.model_copy(update={"region": region})
            await self.regions[region].push([routed.model_dump_json(exclude_none=True)])
            acks.append(Acknowledgement(delivery.lease_id))
            sent.append((region, batch))
        if acks:
            await self.pending.ack(acks)
        return sent

    async def take_back(self, region: str, limit: int = 500) -> int:
        """Batches waiting in a region that is not active (ready, or whose worker's
        lease expired) go back to the dispatch queue; delayed retries follow when due."""
        queue = self.regions[region]
        claimed = await queue.claim(limit)
        if not claimed.deliveries:
            return 0
        payloads = []
        for delivery in claimed.deliveries:
            try:
                batch = PriceBatch.model_validate_json(delivery.payload)
                payloads.append(
                    batch.model_copy(update={"region": None}).model_dump_json(exclude_none=True)
                )
            except ValidationError:
                payloads.append(delivery.payload)  # the next worker dead-letters it, with reason
        await self.pending.push(payloads)
        await queue.ack([Acknowledgement(d.lease_id) for d in claimed.deliveries])
        return len(payloads)

    async def depth(self) -> int:
        return await self.pending.depth()
