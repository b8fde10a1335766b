"""Shared queue on RabbitMQ (``HYDRA_QUEUE_URL=amqp://user:pass@host/vhost``).

The lease of the queue contract is AMQP's unacknowledged delivery:

- **claim** takes what the broker pushed to this worker's consumer (``basic.consume``,
  manual acks, ``basic.qos prefetch_count = HYDRA_QUEUE_PREFETCH``). Until it is
  acked the message is this worker's; if the worker dies, or its connection or
  channel does, the broker puts the message back and another worker gets it.
  A killed worker loses nothing, and needs nobody to notice that it died.
- **renew** sends nothing: the broker keeps an unacked delivery for as long as its
  channel lives, so there is no deadline to push back (only the broker's
  ``consumer_timeout``, 30 min by default, longer than any task's deadline should
  be). It reports the leases of a channel that is gone as lost: the broker has
  given those messages to others.
- **ack** publishes the message's follow-ups (requeued remainders, dead letters),
  each persistent and confirmed by the broker, and only then acks it (``basic.ack``).
  The ledger calls it once everything the message produced is durable. A worker
  dying between the two leaves both the follow-ups and the original (at least
  once, never neither); a retried ack publishes only what was not yet confirmed.
- **release** (graceful shutdown) publishes the message again, from its
  checkpoint, with the same id and delivery count (confirmed), then acks the
  original: it goes back at the tail, not the head. A ``basic.nack(requeue=True)``
  would give it back whole and mark it redelivered, i.e. count a death.
- **checkpoint** publishes its dead letters (confirmed) at once; the resume point is
  kept by this worker and used when it releases the message. A broker cannot change
  a message it has delivered, so a message whose worker died comes back as it was
  last published: from its start (or from the checkpoint of its last release), and
  the IDs its worker stored after that are fetched again (at most what the worker
  held: ``HYDRA_QUEUE_PREFETCH`` messages).
- **requeue with a delay** publishes to a delay queue ``<key>:delay:<ms>`` whose
  messages expire after ``<ms>`` (``x-message-ttl``) and are dead-lettered by the
  broker back onto ``<key>``. Delays are rounded *up* to a grid (100 ms to 28 h,
  steps of at most 1.5x), so each delay queue holds one TTL and expires in order;
  a delay beyond the grid hops through the longest queue until it is due.
- **dead letters** go to the durable queue ``HYDRA_DEADLETTER_KEY`` (the JSON entries,
  with the reason in the ``x-hydra-reason`` header), confirmed, before the message
  they come from is acked.
- **poison messages**: a delivery the broker marks ``redelivered`` was held by a
  worker that died (or whose connection did). A quorum queue counts these in
  ``x-delivery-count``; on a classic queue the count is kept in the message's
  ``x-hydra-deliveries`` header: the redelivered message is published again with
  the count raised (confirmed) and the original acked. From
  ``HYDRA_QUEUE_MAX_DELIVERIES`` on, the message is handed out with its count and
  the intake dead-letters it as ``poison``.
- **depth** is the message count of a passive ``queue.declare`` of the queue (and of
  its routed queues and the delay queues this worker knows of).

Every queue is declared durable, every message is published persistent
(``delivery_mode=2``), ``mandatory`` (a queue deleted meanwhile is an error, not a
silent loss) and with publisher confirms. A queue that already exists is used as
it is (declared passively first), so an operator may create it as a quorum queue;
``?queue_type=quorum`` in the URL makes the workers create every queue that way
(delay queues then dead-letter ``at-least-once``; RabbitMQ 3.10 or later).

A finished message holds one of the ``prefetch_count`` deliveries until the ledger's
next settle round acks it (``HYDRA_ACK_INTERVAL_SECONDS``), so a worker's rate is
about ``HYDRA_QUEUE_PREFETCH`` messages per (batch time + half an ack interval);
``benchmarks/amqp_queue.py`` measures it. Nothing connects before the first call;
the URL's password never appears in logs or descriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
)
from pamqp.commands import Basic

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.models.redaction import redact_url
from crawlers.queues.base import Acknowledgement, Checkpoint, ClaimResult, Delivery, Route

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: own header: deliveries to workers that died holding the message (classic queues)
DELIVERIES_HEADER = "x-hydra-deliveries"
#: own header: when a delayed message is due (epoch ms), for delays beyond the grid
DUE_HEADER = "x-hydra-due"
#: own header of dead-letter entries: their reason, for tools that read headers only
REASON_HEADER = "x-hydra-reason"
#: headers the broker sets, not carried over to a copy
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death", "x-last-death")
#: URL query parameters of Hydra's own (removed before connecting)
URL_OPTIONS = ("queue_type",)
QUEUE_TYPES = ("classic", "quorum")
CONNECT_TIMEOUT = 15.0
PUBLISH_TIMEOUT = 30.0
#: a delayed message that arrives earlier than this before its due time waits again
_EARLY_MS = 1000
#: how long a claim waits for the broker's push when nothing has arrived (seconds)
_ARRIVAL_WAIT = 0.1
#: lease ids acked recently, so an ack retried after a failed round is not a lost lease
_ACKED_MEMORY = 10_000


def delay_grid() -> list[int]:
    """Delay-queue TTLs in ms: 100 ms to 27.8 h, each step at most 1.5 times the last."""
    steps = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5)
    return [int(step * 10**exponent) for exponent in range(2, 8) for step in steps] + [10**8]


DELAY_GRID = delay_grid()


def delay_bucket(delay_ms: int) -> int:
    """The smallest TTL of the grid not below ``delay_ms`` (the longest if none is)."""
    for ttl in DELAY_GRID:
        if ttl >= delay_ms:
            return ttl
    return DELAY_GRID[-1]


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``(url to connect to, Hydra's own options)``: ``?queue_type=`` is ours, not the
    client's."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {name: value for name, value in query if name in URL_OPTIONS}
    rest = [(name, value) for name, value in query if name not in URL_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(rest))), options


def url_problems(url: str) -> list[str]:
    """What is wrong with an ``amqp://`` URL, one line each (never with its password)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return [f"HYDRA_QUEUE_URL={shown!r}: {exc}"]
    if not parts.hostname:
        return [f"HYDRA_QUEUE_URL={shown!r}: no host"]
    queue_type = split_url(url)[1].get("queue_type", "classic")
    if queue_type not in QUEUE_TYPES:
        known = ", ".join(QUEUE_TYPES)
        return [f"HYDRA_QUEUE_URL={shown!r}: queue_type {queue_type!r} (known: {known})"]
    return []


def message_id_of(message: AbstractIncomingMessage) -> str:
    """The producer's ``message_id``, else one derived from the body (the same on every
    redelivery of that message)."""
    return message.message_id or hashlib.sha256(message.body).hexdigest()[:24]


def decode_body(body: bytes) -> tuple[str, bool]:
    """``(text, undecodable)``; bytes that are not UTF-8 are kept backslash-escaped."""
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return body.decode("utf-8", "backslashreplace"), True


class PublishError(RuntimeError):
    """The broker did not confirm a publish (nack, or returned as unroutable)."""


class BrokerConnectionLost(ConnectionError):
    """The connection or channel closed under a call (aiormq cancels what was waiting)."""


P = ParamSpec("P")
R = TypeVar("R")


def _cancelled_by_us() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def broker_call(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """aiormq ends the calls waiting on a connection that closes with ``CancelledError``,
    which the ledger's loops would take for their own cancellation and stop: turn it
    into an ordinary error they retry. A real cancellation of the caller goes through."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if _cancelled_by_us():
                raise
            raise BrokerConnectionLost(str(exc) or "connection to the broker lost") from exc

    return call


class _AsWarning(logging.Filter):
    """aiormq logs a refused connect or a dropped connection as an ERROR, every retry;
    the intake already says what it waits for (and an ERROR counts against a job's
    ``max_errors``): a broker that is away is a warning, as with Redis."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_errors() -> None:
    client = logging.getLogger("aiormq.connection")
    if not any(isinstance(existing, _AsWarning) for existing in client.filters):
        client.addFilter(_AsWarning())


@dataclass
class _Held:
    """A delivery this worker holds: the lease."""

    message: AbstractIncomingMessage
    message_id: str
    deliveries: int
    #: the resume point recorded by the last checkpoint (bytes to publish on release)
    checkpoint: bytes | None = None
    #: follow-ups already confirmed by the broker, not published again on a retry
    published: set[str] = field(default_factory=set)


class AmqpQueue:
    shared = True

    def __init__(
        self,
        url: str,
        key: str,
        *,
        deadletter_key: str,
        worker_id: str,
        prefetch: int = 16,
        max_deliveries: int = 5,
        route: Route | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.deadletter_key = deadletter_key
        self.worker_id = worker_id
        self.prefetch = prefetch
        self.max_deliveries = max_deliveries
        self.route = route
        self._connect_url, options = split_url(url)
        self.queue_type = options.get("queue_type", "classic")
        #: one queue per routed type, e.g. ``hydra:fetch:tasks:ready:s3``
        self.typed = {name: f"{key}:ready:{name}" for name in route.types} if route else {}
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._probe: AbstractChannel | None = None
        self._connect_lock = asyncio.Lock()
        self._probe_lock = asyncio.Lock()
        #: bumped on every new channel: deliveries of an older one are no longer held
        self._generation = 0
        self._buffer: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._held: dict[str, _Held] = {}
        self._acked: OrderedDict[str, None] = OrderedDict()
        #: queues known to exist on this connection
        self._declared: set[str] = set()
        #: delay queues this worker published to or received from, for ``delayed``
        self._delay_queues: set[str] = set()

    @classmethod
    def from_crawler(
        cls, crawler: Crawler, key: str, *, worker_id: str, route: Route | None = None
    ) -> AmqpQueue:
        config = HydraConfig.from_crawler(crawler)
        problems = url_problems(config.queue_url)
        if problems:
            raise HydraConfigError(problems)
        return cls(
            config.queue_url,
            key,
            deadletter_key=config.deadletter_key,
            worker_id=worker_id,
            prefetch=config.queue_prefetch,
            max_deliveries=config.queue_max_deliveries,
            route=route,
        )

    # -- connection ----------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to connect yet: the first call does."""
        quiet_client_errors()

    @broker_call
    async def close(self) -> None:
        """Stop consuming, give back what was prefetched but never claimed, disconnect.
        Leases still held go back to the broker with the channel (as after a crash)."""
        connection = self._connection
        if connection is None:
            return
        try:
            if self._alive():
                await asyncio.wait_for(self._stop_consuming(), PUBLISH_TIMEOUT)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelled_by_us():
                raise
            logger.warning("Giving back prefetched messages failed (%s); the broker will", exc)
        finally:
            self._connection = self._channel = self._probe = None
            self._held.clear()
            self._buffer.clear()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _stop_consuming(self) -> None:
        for queue, tag in self._consumers:
            await queue.cancel(tag)
        self._consumers.clear()
        # prefetched messages never reached the ledger: giving them back by a nack
        # would mark them redelivered, i.e. count a dead worker that did not die
        while self._buffer:
            message = self._buffer.popleft()
            await self._republish(message, self.key, message.body, _deliveries(message))
            await message.ack()

    def _alive(self) -> bool:
        channel = self._channel
        return channel is not None and not channel.is_closed

    async def _ensure(self) -> AbstractChannel:
        """The consuming channel, (re)connecting and (re)subscribing if it is gone."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._connect_lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self._disconnect()
            connection = await aio_pika.connect(
                self._connect_url,
                timeout=CONNECT_TIMEOUT,
                client_properties={"connection_name": f"hydra worker {self.worker_id}"},
            )
            try:
                channel = await connection.channel(publisher_confirms=True)
                await channel.set_qos(prefetch_count=self.prefetch)
                self._connection, self._channel = connection, channel
                self._generation += 1
                self._held.clear()  # the broker gave the old channel's deliveries back
                self._buffer.clear()
                self._declared.clear()
                names = [self.key]
                if self.route is not None:
                    names += [self.typed[name] for name in sorted(self.route.wanted)]
                for name in names:
                    await self._declare(name)
                callback = functools.partial(self._on_message, self._generation)
                for name in names:
                    queue = await channel.get_queue(name, ensure=False)
                    self._consumers.append((queue, await queue.consume(callback)))
            except BaseException:
                self._connection = self._channel = self._probe = None
                with contextlib.suppress(Exception):
                    await connection.close()
                raise
            return channel

    async def _disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._probe = None
        self._consumers.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _on_message(self, generation: int, message: AbstractIncomingMessage) -> None:
        if generation == self._generation:
            self._buffer.append(message)
            self._arrived.set()

    async def _probe_channel(self) -> AbstractChannel:
        """A channel for declarations: a failing one (404, a queue of another type)
        closes it, never the channel the leases live on."""
        await self._ensure()
        probe = self._probe
        if probe is None or probe.is_closed:
            assert self._connection is not None
            probe = self._probe = await self._connection.channel(publisher_confirms=False)
        return probe

    def _arguments(self, name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return arguments

    async def _declare(self, name: str, arguments: dict[str, Any] | None = None) -> int:
        """Make sure the durable queue ``name`` exists; its message count. An existing
        queue is used as it is (passive declare), whatever its type and arguments."""
        async with self._probe_lock:
            try:
                probe = await self._probe_channel()
                queue = await probe.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                probe = await self._probe_channel()
                wanted = {**self._arguments(name), **(arguments or {})}
                queue = await probe.declare_queue(name, durable=True, arguments=wanted)
        self._declared.add(name)
        result = queue.declaration_result
        return int(result.message_count or 0) if result is not None else 0

    async def _count(self, name: str) -> int:
        """Messages ready in ``name``; 0 if there is no such queue."""
        async with self._probe_lock:
            try:
                probe = await self._probe_channel()
                queue = await probe.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
        result = queue.declaration_result
        return int(result.message_count or 0) if result is not None else 0

    # -- publishing --------------------------------------------------------------------

    async def _publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        like: AbstractIncomingMessage | None = None,
    ) -> None:
        """Persistent, mandatory, confirmed: returns only once the broker has it."""
        channel = await self._ensure()
        if routing_key not in self._declared:
            await self._declare(routing_key)
        properties: dict[str, Any] = {}
        if like is not None:  # a copy keeps what its producer said about the body
            properties = {
                "content_type": like.content_type,
                "content_encoding": like.content_encoding,
                "correlation_id": like.correlation_id,
                "type": like.type,
                "app_id": like.app_id,
            }
        if content_type is not None:
            properties["content_type"] = content_type
        message = aio_pika.Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=headers or None,
            **properties,
        )
        result = await channel.default_exchange.publish(
            message, routing_key=routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT
        )
        if not isinstance(result, Basic.Ack):
            self._declared.discard(routing_key)  # returned: the queue is gone
            what = "returned as unroutable" if result is not None else "not confirmed"
            raise PublishError(f"publish to queue {routing_key!r} {what}")

    async def _republish(
        self, message: AbstractIncomingMessage, routing_key: str, body: bytes, deliveries: int
    ) -> None:
        """A copy of ``message`` (same id) with ``deliveries`` deaths counted."""
        headers = {
            name: value
            for name, value in (message.headers or {}).items()
            if not name.startswith(_BROKER_HEADERS)
        }
        headers[DELIVERIES_HEADER] = deliveries
        await self._publish(
            routing_key, body, message_id=message_id_of(message), headers=headers, like=message
        )

    async def _publish_delayed(self, body: bytes, delay: float, headers: dict[str, Any]) -> None:
        delay_ms = max(1, int(delay * 1000 + 0.999))
        ttl = delay_bucket(delay_ms)
        name = f"{self.key}:delay:{ttl}"
        if name not in self._declared:
            arguments: dict[str, Any] = {
                "x-message-ttl": ttl,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.key,
            }
            if self.queue_type == "quorum":  # the broker's own move, confirmed internally
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
            await self._declare(name, arguments)
        self._delay_queues.add(name)
        headers = {**headers, DUE_HEADER: int(time.time() * 1000) + delay_ms}
        await self._publish(name, body, message_id=secrets.token_hex(12), headers=headers)

    # -- the contract --------------------------------------------------------------------

    @broker_call
    async def push(self, payloads: Sequence[str]) -> None:
        if not payloads:
            return
        await self._ensure()
        await asyncio.gather(
            *(
                self._publish(
                    self.key,
                    payload.encode("utf-8", "surrogatepass"),
                    message_id=secrets.token_hex(12),
                )
                for payload in payloads
            )
        )

    @broker_call
    async def claim(self, limit: int) -> ClaimResult:
        await self._ensure()
        if not self._buffer:  # an ack just freed room: the broker's push is on its way
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), _ARRIVAL_WAIT)
        deliveries: list[Delivery] = []
        reclaimed = 0
        while len(deliveries) < limit and self._buffer:
            message = self._buffer.popleft()
            if message.redelivered:
                reclaimed += 1
            try:
                delivery = await self._take(message)
            except BaseException:
                # not handed out: the message stays this worker's until the next claim
                # (or the broker's, if the channel is what failed)
                self._buffer.appendleft(message)
                if deliveries:
                    break
                raise
            if delivery is not None:
                deliveries.append(delivery)
        delayed = 0 if deliveries else await self._delayed()
        return ClaimResult(deliveries, reclaimed, delayed)

    async def _take(self, message: AbstractIncomingMessage) -> Delivery | None:
        """The delivery to hand out, or ``None`` when ``message`` was moved instead: a
        retry that is not due yet, a death to record (classic queue), another type's."""
        headers = message.headers or {}
        first_death = headers.get("x-first-death-queue")
        if isinstance(first_death, str) and first_death.startswith(f"{self.key}:delay:"):
            self._delay_queues.add(first_death)
        due = headers.get(DUE_HEADER)
        if isinstance(due, int) and due - time.time() * 1000 > _EARLY_MS:
            await self._publish_delayed(message.body, (due - time.time() * 1000) / 1000, {})
            await message.ack()
            return None
        deliveries = _deliveries(message)
        counted = isinstance(headers.get("x-delivery-count"), int)  # by a quorum queue
        if message.redelivered and not counted and deliveries < self.max_deliveries:
            # record the death on the message itself: a copy with the count, which
            # comes round again (at the tail) as an ordinary delivery
            await self._republish(message, self.key, message.body, deliveries)
            await message.ack()
            return None
        destination = self._route_of(message.body)
        if destination is not None:
            await self._republish(message, destination, message.body, deliveries)
            await message.ack()
            return None
        lease_id = f"{self.worker_id}:{self._generation}:{message.delivery_tag}"
        message_id = message_id_of(message)
        self._held[lease_id] = _Held(message, message_id, deliveries)
        payload, undecodable = decode_body(message.body)
        return Delivery(lease_id, payload, self.key, message_id, deliveries, undecodable)

    def _route_of(self, body: bytes) -> str | None:
        """The queue of a known type this worker does not take; ``None``: its own (or
        unreadable, or of an unknown type: to be dead-lettered by whoever claims it)."""
        route = self.route
        if route is None:
            return None
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return None
        kind = message.get(route.field) if isinstance(message, dict) else None
        if not isinstance(kind, str) or kind not in self.typed or kind in route.wanted:
            return None
        return self.typed[kind]

    async def _delayed(self) -> int:
        counts = [await self._count(name) for name in sorted(self._delay_queues)]
        return sum(counts)

    def _holding(self, lease_id: str) -> _Held | None:
        held = self._held.get(lease_id)
        if held is not None and not self._alive():
            self._held.clear()
            return None
        return held

    async def renew(self, lease_ids: Sequence[str]) -> list[str]:
        """Nothing to extend; the leases of a channel that is gone are lost."""
        return [lease_id for lease_id in lease_ids if self._holding(lease_id) is None]

    @broker_call
    async def ack(self, acks: Sequence[Acknowledgement]) -> list[bool]:
        results: list[bool] = []
        errors: list[BaseException] = []
        for ack in acks:
            held = self._holding(ack.lease_id)
            if held is None:
                results.append(ack.lease_id in self._acked)  # acked by an earlier try
                continue
            failed = await self._publish_follow_ups(held, ack)
            if failed is not None:
                errors.append(failed)
                results.append(False)
                continue
            try:
                await held.message.ack()
            except (Exception, asyncio.CancelledError) as exc:  # the channel is gone, and
                if isinstance(exc, asyncio.CancelledError) and _cancelled_by_us():
                    raise
                errors.append(exc)  # so is the lease
                results.append(False)
                self._held.pop(ack.lease_id, None)
                continue
            self._held.pop(ack.lease_id, None)
            self._acked[ack.lease_id] = None
            while len(self._acked) > _ACKED_MEMORY:
                self._acked.popitem(last=False)
            results.append(True)
        if errors:  # the ledger retries the round; what was acked answers True then
            raise errors[0]
        return results

    async def _publish_follow_ups(self, held: _Held, ack: Acknowledgement) -> BaseException | None:
        """Publish what is not yet confirmed, concurrently; the first failure, if any."""
        jobs: list[tuple[str, Any]] = []
        for index, requeue in enumerate(ack.requeue):
            marker = f"requeue:{index}:{requeue.delay}:{requeue.payload}"
            if marker in held.published:
                continue
            body = requeue.payload.encode("utf-8", "surrogatepass")
            if requeue.delay > 0:
                job = self._publish_delayed(body, requeue.delay, {})
            else:
                job = self._publish(self.key, body, message_id=secrets.token_hex(12))
            jobs.append((marker, job))
        jobs += self._deadletter_jobs(held, ack.deadletter)
        return await self._run_jobs(held, jobs)

    def _deadletter_jobs(self, held: _Held, entries: Sequence[str]) -> list[tuple[str, Any]]:
        jobs: list[tuple[str, Any]] = []
        for entry in entries:
            marker = f"deadletter:{entry}"
            if marker in held.published:
                continue
            entry_id, reason = _entry_fields(entry)
            job = self._publish(
                self.deadletter_key,
                entry.encode("utf-8", "surrogatepass"),
                message_id=entry_id or secrets.token_hex(12),
                headers={REASON_HEADER: reason} if reason else None,
                content_type="application/json",
            )
            jobs.append((marker, job))
        return jobs

    async def _run_jobs(self, held: _Held, jobs: list[tuple[str, Any]]) -> BaseException | None:
        if not jobs:
            return None
        outcomes = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
        failure: BaseException | None = None
        for (marker, _), outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                held.published.add(marker)
        return failure

    @broker_call
    async def checkpoint(self, checkpoints: Sequence[Checkpoint]) -> list[bool]:
        results: list[bool] = []
        errors: list[BaseException] = []
        for checkpoint in checkpoints:
            held = self._holding(checkpoint.lease_id)
            if held is None:
                results.append(False)
                continue
            failed = await self._run_jobs(held, self._deadletter_jobs(held, checkpoint.deadletter))
            if failed is not None:
                errors.append(failed)
                results.append(False)
                continue
            if checkpoint.payload is not None:
                held.checkpoint = checkpoint.payload.encode("utf-8", "surrogatepass")
            results.append(True)
        if errors:
            raise errors[0]
        return results

    @broker_call
    async def release(self, lease_ids: Sequence[str]) -> int:
        """Each message again from its checkpoint, same id and count, then the ack."""
        released = 0
        for lease_id in lease_ids:
            held = self._holding(lease_id)
            if held is None:
                continue
            body = held.checkpoint if held.checkpoint is not None else held.message.body
            await self._republish(held.message, self.key, body, held.deliveries)
            await held.message.ack()
            self._held.pop(lease_id, None)
            released += 1
        return released

    @broker_call
    async def depth(self) -> int:
        names = [self.key, *self.typed.values(), *sorted(self._delay_queues)]
        counts = [await self._count(name) for name in names]
        return sum(counts)

    async def server_warnings(self) -> list[str]:
        return []

    async def recover(self) -> None:
        """Nothing is ever left half-done: every publish is confirmed before its ack."""

    def describe(self) -> str:
        return f"{redact_url(self.url)} queue {self.key} (prefetch {self.prefetch})"

    def describe_deadletter(self) -> str:
        return f"{redact_url(self.url)} queue {self.deadletter_key}"


def _deliveries(message: AbstractIncomingMessage) -> int:
    """Deliveries of ``message`` to workers that died holding it: the count it carries,
    plus the broker's (``x-delivery-count`` of a quorum queue; on a classic queue, one
    if it is marked redelivered)."""
    headers = message.headers or {}
    own = headers.get(DELIVERIES_HEADER, 0)
    count = own if isinstance(own, int) and own >= 0 else 0
    returned = headers.get("x-delivery-count")
    if isinstance(returned, int):
        return count + max(returned, 0)
    return count + 1 if message.redelivered else count


def _entry_fields(entry: str) -> tuple[str, str]:
    """``(id, reason)`` of a dead-letter entry (empty when it does not parse)."""
    try:
        data = json.loads(entry)
    except (ValueError, RecursionError):
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("id") or ""), str(data.get("reason") or "")
