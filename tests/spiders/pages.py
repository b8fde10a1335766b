"""A task kind unlike price batches: one job, many pages fetched in parallel.

The first page of a job (a "listing") yields an item and a follow-up request
per remaining ID; those run concurrently. The spider keeps no books: the
ledger attributes every follow-up and item to the job's run, acks it once all
pages are stored, and a failing page fails the whole job (the kind's default:
dead-lettered as ``task_failed``) while the job's other pages are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, Field
from scrapy import Request
from scrapy.http import Response

from crawlers.spiders.base import TaskSpider
from crawlers.tasks.base import TaskKind, TaskRun


class PagesJob(BaseModel):
    job_id: str = Field(min_length=1)
    base_url: str = Field(pattern=r"^http://127\.0\.0\.1:\d+/price/$")
    ids: list[str] = Field(min_length=1)


class PagesKind(TaskKind):
    name = "sandbox_pages"

    def queue_key(self) -> str:
        return "hydra:test:pages"

    def parse(self, payload: str) -> PagesJob:
        return PagesJob.model_validate_json(payload)

    def row_key(self, item: Any) -> str | None:
        return f"{item['job_id']}/{item['id']}"


class PagesSpider(TaskSpider):
    name = "pages"
    task_kind = "sandbox_pages"
    task_components: ClassVar[dict[str, dict[str, int]]] = {
        "ITEM_PIPELINES": {"crawlers.pipelines.sinks.SinkPipeline": 900},
    }

    def start_task(self, run: TaskRun) -> Iterator[Request]:
        job: PagesJob = run.message
        yield self._page(job, job.ids[0], self.parse_listing)

    def parse_listing(self, response: Response) -> Iterator[Any]:
        run = self.run_of(response)
        if run is None:
            return
        job: PagesJob = run.message
        yield self._item(job, job.ids[0], response)
        for id_ in job.ids[1:]:
            yield self._page(job, id_, self.parse_page)

    def parse_page(self, response: Response, id_: str, job_id: str) -> Iterator[Any]:
        yield {"job_id": job_id, "id": id_, "price": response.json()["price"]}

    def _page(self, job: PagesJob, id_: str, callback: Any) -> Request:
        return Request(
            job.base_url + quote(id_, safe=""),
            method="POST",
            callback=callback,
            cb_kwargs={"id_": id_, "job_id": job.job_id} if callback == self.parse_page else {},
            dont_filter=True,
        )

    @staticmethod
    def _item(job: PagesJob, id_: str, response: Response) -> dict[str, Any]:
        return {"job_id": job.job_id, "id": id_, "price": response.json()["price"]}
