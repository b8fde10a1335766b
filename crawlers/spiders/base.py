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

from scrapy import Spider
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.misc import load_object
from scrapy.utils.spider import iterate_spider_output

from crawlers.extensions.task_ledger import TaskLedger
from crawlers.tasks.base import RunFailure, TaskKind, TaskRun
from crawlers.tasks.failures import ForbiddenUrl, run_failure

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: Scrapy components every task spider needs, merged into the project's dicts
TASK_COMPONENTS: dict[str, dict[str, int]] = {
    "EXTENSIONS": {
        "crawlers.extensions.task_ledger.TaskLedger": 100,
        "crawlers.extensions.run_summary.RunSummary": 900,
    },
    "SPIDER_MIDDLEWARES": {"crawlers.middlewares.task_runs.TaskRunMiddleware": 10},
    "DOWNLOADER_MIDDLEWARES": {"crawlers.middlewares.task_requests.TaskRequestsMiddleware": 40},
    "ITEM_PIPELINES": {"crawlers.pipelines.sinks.SinkPipeline": 900},
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
        try:
            async for run in ledger.consume():
                async for output in self._start_run(run):
                    yield output
        except Exception:  # a bug in the intake itself: stop taking work, fail loudly
            logger.exception("Hydra intake failed; this worker takes no more messages")
            ledger.fail_worker("intake_error")

    async def _start_run(self, run: TaskRun) -> AsyncIterator[Any]:
        """``start_task`` for one run; anything it raises ends that run, not the intake."""
        ledger = self.ledger
        try:
            result = self.start_task(run)
            if isinstance(result, AsyncIterator):
                async for output in result:
                    if run.finished:
                        break
                    ledger.attach(run, output)
                    yield output
            else:
                for output in result:
                    if run.finished:
                        break
                    ledger.attach(run, output)
                    yield output
        except Exception as exc:
            logger.exception("Starting a %s run failed", run.kind.name)
            ledger.fail(run, RunFailure("start_error", f"{type(exc).__name__}: {exc}"))
        finally:
            ledger.start_finished(run)

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
