"""The base of queue-driven spiders: it owns the intake loop, subclasses fetch.

A subclass names its task kind (``task_kind``) and says how a run starts
(``start_task``: requests and items for one claimed message). Everything
else is bookkeeping the ledger and ``TaskRunMiddleware`` do for it: follow-up
requests and items of a run are attributed to it, failures reach the kind,
and the run ends by itself once no request of it is outstanding.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy import Request, Spider
from scrapy.exceptions import IgnoreRequest
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.misc import load_object
from scrapy.utils.spider import iterate_spider_output
from twisted.python.failure import Failure

from crawlers.extensions.task_ledger import TaskLedger
from crawlers.spiders.outputs import STARTED, RunOutputs
from crawlers.tasks.base import RunFailure, TaskKind, TaskRun
from crawlers.tasks.failures import ForbiddenUrl, run_failure

if TYPE_CHECKING:
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: Scrapy components every task spider needs, merged into the project's dicts
TASK_COMPONENTS: dict[str, dict[str, int]] = {
    "EXTENSIONS": {
        "crawlers.extensions.task_ledger.TaskLedger": 100,
        "crawlers.extensions.run_summary.RunSummary": 900,
    },
    "SPIDER_MIDDLEWARES": {"crawlers.middlewares.task_runs.TaskRunMiddleware": 10},
    "DOWNLOADER_MIDDLEWARES": {"crawlers.middlewares.task_requests.TaskRequestsMiddleware": 40},
}


class TaskSpider(Spider):
    #: name of the task kind this spider consumes (``HYDRA_TASK_KINDS``)
    task_kind: ClassVar[str] = ""
    #: components this spider adds to ``TASK_COMPONENTS`` (e.g. a kind's own middleware)
    task_components: ClassVar[dict[str, dict[str, int]]] = {}

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        """``custom_settings``, then the task components merged into the project's
        component dicts (``custom_settings`` would replace a dict, not extend it).

        The merged dicts are set one priority above what they had (at least spider
        priority): ``scrapy crawl`` merges the project and command-line settings into
        the crawler again, and an equal priority would drop the merge.
        """
        super().update_settings(settings)
        for table in (TASK_COMPONENTS, cls.task_components):
            for name, components in table.items():
                for path, order in components.items():
                    settings.set_in_component_priority_dict(name, load_object(path), order)
                priority = max(settings.getpriority(name) or 0, SETTINGS_PRIORITIES["spider"]) + 1
                settings.set(name, settings.getdict(name), priority=priority)

    @cached_property
    def ledger(self) -> TaskLedger:
        return TaskLedger.of(self.crawler)

    @cached_property
    def kind(self) -> TaskKind:
        return self.ledger.kind_named(self.task_kind)

    def seed_payloads(self) -> list[str]:
        """Messages built from spider arguments (``-a ...``), pushed before consuming."""
        return []

    def start_task(self, run: TaskRun) -> Iterable[Any] | AsyncIterator[Any]:
        """The first requests (and any items) of one claimed run."""
        raise NotImplementedError

    async def start(self) -> AsyncIterator[Any]:
        """Every claimed run is driven by its own task, so runs progress side by side
        (a run may await direct downloads, see :meth:`fetch`); their requests and
        items reach Scrapy through here, attributed to their run."""
        ledger = self.crawler.get_extension(TaskLedger)
        if ledger is None or ledger.queue is None:
            logger.error("No task queue: the ledger did not open (see the errors above)")
            if ledger is not None:
                ledger.fail_worker("setup_error")
            elif self.crawler.stats is not None:
                self.crawler.stats.set_value("hydra/worker/failed", "setup_error")
            return
        try:
            payloads = self.seed_payloads()
            if payloads:
                await ledger.push(payloads)
        except Exception:
            logger.exception("Could not queue the messages given as spider arguments")
            ledger.fail_worker("seed_failed")
            return
        self._outputs = outputs = RunOutputs(ledger.config.queue_prefetch * 2)
        intake = outputs.spawn(self._intake(ledger))
        try:
            async for output in self._attributed(ledger, outputs):
                yield output
        finally:
            # Scrapy stops reading start() when the crawl stops: take no more work, but
            # let the runs' drivers finish what they are fetching (its items are still
            # stored); they stop at their next fetch, and closed() ends the rest
            outputs.cancel(intake)

    @staticmethod
    async def _attributed(ledger: TaskLedger, outputs: RunOutputs) -> AsyncIterator[Any]:
        """The merged outputs, each attributed to its run as Scrapy takes it."""
        async for run, output in outputs:
            if output is STARTED:
                ledger.start_finished(run)  # after everything it yielded is attached
            elif not run.finished:
                ledger.attach(run, output)
                yield output

    async def _intake(self, ledger: TaskLedger) -> None:
        try:
            async for run in ledger.consume():
                self._outputs.spawn(self._drive(run))
        except Exception:  # a bug in the intake itself: stop taking work, fail loudly
            logger.exception("Hydra intake failed; this worker takes no more messages")
            ledger.fail_worker("intake_error")

    async def _drive(self, run: TaskRun) -> None:
        """``start_task`` for one run; anything it raises ends that run, not the intake."""
        try:
            result = self.start_task(run)
            if isinstance(result, AsyncIterator):
                async for output in result:
                    if run.finished:
                        break
                    await self._hand_over(run, output)
            else:
                for output in result:
                    if run.finished:
                        break
                    await self._hand_over(run, output)
        except Exception as exc:
            logger.exception("Starting a %s run failed", run.kind.name)
            self.ledger.fail(run, RunFailure("start_error", f"{type(exc).__name__}: {exc}"))
        finally:
            await self._outputs.put(run, STARTED)

    async def store_item(self, run: TaskRun, item: Any) -> None:
        """Put ``item`` of ``run`` through the item pipelines now and wait for them: for
        runs that produce items from several tasks of their own at once."""
        await self._hand_over(run, item)

    async def _hand_over(self, run: TaskRun, output: Any) -> None:
        """Requests go to Scrapy's scheduler through ``start()``; items go straight into
        the item pipelines, awaited by the run's own driver, so an item fetched while
        the spider closes is still stored (the scraper waits for it)."""
        if isinstance(output, Request):
            await self._outputs.put(run, output)
            return
        if output is None:
            return
        engine = self.crawler.engine
        if engine is None or engine.scraper.slot is None:
            return  # closed: the run's message goes back from its checkpoint
        self.ledger.attach(run, output)
        scraper = engine.scraper
        try:
            await scraper.start_itemproc_async(output, response=None)
        finally:
            # Scrapy checks whether a closing scraper has become idle only after a
            # response; an item stored from here must trigger that check too, or a
            # shutdown that waited for it would wait for ever (Scrapy 2.19)
            check = getattr(scraper, "_check_if_closing", None)
            if check is not None and scraper.slot is not None:
                check()

    def closed(self, reason: str) -> None:
        """Runs still driven at close stop here; the ledger gives their messages back."""
        outputs = getattr(self, "_outputs", None)
        if outputs is not None:
            outputs.cancel()

    async def fetch(self, request: Request) -> Response:
        """Download ``request`` now and return its response: through the downloader
        middlewares (URL policy, stop-on-status, proxies, timeouts) but no scheduler,
        callback or spider middleware. For runs whose requests form a chain (the next
        only after the previous response), a run written as an async ``start_task``
        that awaits this does per request only what the chain needs. Failures raise
        (e.g. :class:`~crawlers.tasks.failures.StatusRefused`); see :meth:`fail_run`."""
        engine = self.crawler.engine
        if engine is None or not self.crawler.crawling:
            raise IgnoreRequest("the crawl is stopping")
        return await engine.download_async(request)

    def fail_run(self, run: TaskRun, request: Request, exc: BaseException) -> None:
        """End ``run`` because fetching ``request`` raised ``exc`` (its kind decides).

        Not while the crawl is stopping: a download cut short by a shutdown says
        nothing about the run, which goes back from its checkpoint unjudged."""
        if not self.crawler.crawling:
            return
        self.ledger.fail(run, run_failure(Failure(exc), request))  # type: ignore[no-untyped-call]

    # -- helpers for subclasses ---------------------------------------------

    def run_of(self, response: Response) -> TaskRun | None:
        """The live run a response belongs to (``None`` once the run has ended)."""
        request = response.request
        return self.ledger.run_for(request.meta.get("hydra_lease")) if request else None

    def fail_task(self, response: Response, reason: str, detail: str) -> None:
        """End the response's run as failed; its kind decides (requeue, dead-letter)."""
        run = self.run_of(response)
        if run is not None:
            self.ledger.fail(run, RunFailure(reason, detail, response.request))

    def hydra_errback(self, failure: Failure) -> list[Any]:
        """Errback of every task request: the failure goes to the request's own errback
        if it had one (its output is attributed to the run), else to the task kind."""
        request: Request = failure.request  # type: ignore[attr-defined]
        ledger = self.ledger
        run = ledger.run_for(request.meta.get("hydra_lease"))
        outputs: list[Any] = []
        try:
            own = self._own_errback(request)
            if run is None:
                pass  # the run is over: nothing to decide
            elif own is None or isinstance(failure.value, ForbiddenUrl):
                ledger.fail(run, run_failure(failure, request))
            else:
                request.meta["hydra_outputs_attributed"] = True
                result = own(failure)
                if inspect.isawaitable(result) or isinstance(result, AsyncIterator):
                    raise TypeError("async errbacks are not supported on task requests")
                for output in iterate_spider_output(result):
                    ledger.attach(run, output)
                    outputs.append(output)
        except Exception as exc:
            logger.exception("Errback of %s failed", request)
            if run is not None:
                ledger.fail(run, RunFailure("errback_error", repr(exc), request))
        finally:
            ledger.request_done(request)
        return outputs

    def _own_errback(self, request: Request) -> Any:
        own = request.meta.get("hydra_errback")
        return getattr(self, own) if isinstance(own, str) else own
