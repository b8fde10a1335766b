"""Seed 000's batch rules: sequential IDs, stop at the first failure, requeue the rest.

A batch's progress (``run.cursor``) is the index of the first ID whose item
has not been emitted. It is the resume point: a checkpoint is the batch's
remainder from there, so a batch reclaimed after a crash re-fetches only what
was not yet durable. A failure at ID ``i`` requeues ``ids[i:]`` with
``attempt + 1`` after a back-off delay (``Retry-After`` when the server sent
one), or dead-letters it after ``HYDRA_BATCH_MAX_ATTEMPTS``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from scrapy import Request
from w3lib.http import basic_auth_header
from w3lib.url import safe_url_string

from crawlers.items import PriceItem
from crawlers.models import PriceBatch
from crawlers.models.run_events import RunEvent, RunEventType
from crawlers.queues.base import Requeue
from crawlers.tasks.base import InvalidMessage, Outcome, RunFailure, TaskKind, TaskRun
from crawlers.urlpolicy import UrlPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler

    from crawlers.models.deadletter import DeadLetterReason


class PriceBatchKind(TaskKind):
    name = "price_batch"

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.policy = UrlPolicy.from_config(self.config)
        self.ok_statuses = sorted(set(self.config.batch_ok_statuses))
        region = self.config.region_named(self.config.region)
        #: the region's egress proxy: every request goes out through it
        self.egress = region.egress if region is not None else None

    def queue_key(self) -> str:
        return self.config.region_queue_key(self.config.region)

    def parse(self, payload: str) -> PriceBatch:
        batch = PriceBatch.model_validate_json(payload)
        sample = self.template(batch).replace("{id}", "x")
        try:
            requested = safe_url_string(sample)  # the URL Scrapy's Request will hold
        except ValueError as exc:
            raise InvalidMessage(f"url_template: {exc}") from None
        problem = self.policy.violation(sample) or self.policy.violation(requested)
        if problem is not None:
            raise InvalidMessage(f"url_template: {problem}", reason="forbidden_url")
        return batch

    def template(self, batch: PriceBatch) -> str:
        return batch.url_template or self.config.price_url_template

    def admitted(self, run: TaskRun) -> None:
        batch: PriceBatch = run.message
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("hydra/prices/batches_received")
        if batch.attempt == 0 and batch.reason is None:
            stats.inc_value("hydra/prices/ids_received", len(batch.ids))
        if run.delivery.redeliveries:
            # what the dead worker had not checkpointed may be fetched twice
            stats.inc_value("hydra/prices/ids_redelivered", len(batch.ids))

    # -- requests and items -------------------------------------------------

    def request(
        self, run: TaskRun, index: int, callback: Callable[..., Any] | None = None
    ) -> Request:
        """The POST for ``ids[index]``; retries and redirects are the batch's business."""
        batch: PriceBatch = run.message
        url = self.template(batch).replace("{id}", quote(batch.ids[index], safe=""))
        headers: dict[str, str | bytes] = {}
        parts = urlsplit(url)
        if "@" in parts.netloc:  # Scrapy cannot fetch user:password@host: basic auth instead
            userinfo, _, host = parts.netloc.rpartition("@")
            user, _, password = userinfo.partition(":")
            headers["Authorization"] = basic_auth_header(unquote(user), unquote(password))
            url = urlunsplit(parts._replace(netloc=host))
        return Request(
            url,
            method="POST",
            headers=headers,
            callback=callback,
            dont_filter=True,
            meta={
                "hydra_lease": run.lease_id,
                "hydra_index": index,
                "dont_retry": True,
                "dont_redirect": True,
                # statuses listed as OK reach a callback even outside 2xx
                "handle_httpstatus_list": self.ok_statuses,
                **({"proxy": self.egress} if self.egress else {}),
            },
        )

    def item(self, run: TaskRun, index: int, data: object) -> PriceItem:
        batch: PriceBatch = run.message
        run.cursor = index + 1
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("hydra/prices/ids_fetched")
        return PriceItem(
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            id=batch.ids[index],
            data=data,
            fetched_at=datetime.now(UTC).isoformat(),
            region=self.config.region,
            attempt=batch.attempt,
        )

    # -- how runs end -------------------------------------------------------

    def checkpoint(self, run: TaskRun) -> str | None:
        batch: PriceBatch = run.message
        done = run.settled_cursor
        if done == 0 or done >= len(batch.ids):
            return None
        reason = "resumed after the IDs before it were stored"
        rest = batch.remainder(done, reason, next_attempt=False)
        return rest.model_dump_json(exclude_none=True)

    def exhausted(self, run: TaskRun) -> bool:
        batch: PriceBatch = run.message
        return run.settled_cursor >= len(batch.ids)

    def on_complete(self, run: TaskRun) -> Outcome:
        batch: PriceBatch = run.message
        if run.cursor >= len(batch.ids):
            self._inc("hydra/prices/batches_completed")
            return Outcome(events=[self._event(run, "done")])
        # the chain of requests ended early (a request dropped, a callback that
        # yielded nothing): the IDs not fetched go back like after a failure
        detail = f"request chain ended after {run.cursor} of {len(batch.ids)} IDs"
        return self.on_failure(run, RunFailure("chain_ended", detail))

    def on_failure(self, run: TaskRun, failure: RunFailure) -> Outcome:
        batch: PriceBatch = run.message
        index = run.cursor
        if failure.request is not None and "hydra_index" in failure.request.meta:
            index = int(failure.request.meta["hydra_index"])
        if index >= len(batch.ids):  # every ID was fetched: nothing is left to retry
            return self.on_complete(run)
        reason = (
            f"{failure.detail} for id {batch.ids[index]} "
            f"(region {self.config.region}, attempt {batch.attempt})"
        )
        remainder = batch.remainder(index, reason)
        payload = remainder.model_dump_json(exclude_none=True)
        self._inc("hydra/prices/batches_stopped")
        self._inc(f"hydra/prices/stopped/{failure.reason}")
        stopped = self._event(run, "stopped", remainder=len(remainder.ids), reason=reason)
        if failure.permanent or remainder.attempt >= self.config.batch_max_attempts:
            self._inc("hydra/prices/ids_deadlettered", len(remainder.ids))
            why: DeadLetterReason = "max_attempts"
            if failure.reason == "forbidden_url":
                why = "forbidden_url"
            entry = self.dead_letter(run, why, reason, payload)
            failed = self._event(run, "failed", ids=remainder.ids, reason=reason)
            return Outcome(deadletter=[entry], events=[stopped, failed])
        self._inc("hydra/prices/ids_requeued", len(remainder.ids))
        delay = self.retry_delay(remainder.attempt, failure.retry_after)
        return Outcome(requeue=[Requeue(payload, delay)], events=[stopped])

    def progress_events(self, run: TaskRun, through: int) -> list[str]:
        batch: PriceBatch = run.message
        ids = batch.ids[run.reported_cursor : through]
        return [self._event(run, "stored", ids=ids)] if ids else []

    def _event(self, run: TaskRun, type_: RunEventType, **fields: Any) -> str:
        batch: PriceBatch = run.message
        event = RunEvent(
            type=type_,
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            region=self.config.region,
            attempt=batch.attempt,
            worker=self.worker_id,
            # a download error may quote a URL: no credentials on the stream
            **{
                k: self.config.redactor.text(v)[:2048] if k == "reason" else v
                for k, v in fields.items()
            },
        )
        return event.model_dump_json(exclude_none=True)

    def row_key(self, item: Any) -> str | None:
        if isinstance(item, PriceItem):
            return f"{item.run_id}/{item.id}"
        return None

    @classmethod
    def replay_payload(cls, payload: str) -> str:
        batch = PriceBatch.model_validate_json(payload)
        fresh = batch.model_copy(update={"attempt": 0, "reason": "replayed from the dead-letter"})
        return fresh.model_dump_json(exclude_none=True)

    # -- reporting ----------------------------------------------------------

    def succeeded(self, stats: dict[str, Any]) -> bool:
        return int(stats.get("hydra/prices/ids_fetched", 0)) > 0

    def progress(self, stats: dict[str, Any]) -> tuple[str, int]:
        return "IDs done", int(stats.get("hydra/prices/ids_fetched", 0))

    def summary_lines(self, stats: dict[str, Any]) -> list[str]:
        def count(key: str) -> int:
            return int(stats.get(f"hydra/prices/{key}", 0))

        return [
            f"IDs asked:         {count('ids_seeded') or count('ids_received')}",
            f"IDs fetched:       {count('ids_fetched')}",
            f"IDs stored:        {int(stats.get('hydra/sink/items_stored', 0))}",
            f"IDs requeued:      {count('ids_requeued')} "
            f"(in {count('batches_stopped')} stopped batches)",
            f"IDs dead-lettered: {count('ids_deadlettered')}",
        ]

    def _inc(self, key: str, count: int = 1) -> None:
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(key, count)
