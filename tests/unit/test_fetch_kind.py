"""Seed 003's fetch-task kind: what it admits, how it routes, what a failure does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from crawlers.extensions.task_ledger import TaskLedger
from crawlers.queues import Delivery
from crawlers.spiders.fetch import FtpSpider
from crawlers.tasks.base import InvalidMessage, RunFailure, TaskRun
from crawlers.tasks.fetch_tasks import SOURCE_TYPES, FetchTaskKind
from tests.unit.helpers import PROJECT_SETTINGS

TASK = {
    "job_id": "job_1",
    "channel_id": "ch_1",
    "source_type": "ftp",
    "config": {"host": "ftp.example.com", "password": "hunter2", "remote_path": "/in"},
}


def _kind(**settings: Any) -> tuple[FetchTaskKind, FtpSpider]:
    crawler = get_crawler(FtpSpider, {**PROJECT_SETTINGS, **settings})
    spider = FtpSpider.from_crawler(crawler)
    crawler.spider = spider
    ledger = crawler.get_extension(TaskLedger)
    assert ledger is not None
    kind = ledger.kind_named("fetch_task")
    assert isinstance(kind, FetchTaskKind)
    return kind, spider


def _run(kind: FetchTaskKind, task: dict[str, Any]) -> TaskRun:
    payload = json.dumps(task)
    return TaskRun(Delivery("lease-1", payload, "q", "m1"), kind, message=kind.parse(payload))


def test_a_worker_routes_the_types_it_does_not_fetch() -> None:
    kind, spider = _kind()
    route = kind.route(spider)
    assert route is not None
    assert (route.field, route.types, route.wanted) == ("source_type", SOURCE_TYPES, {"ftp"})


def test_a_task_of_another_type_is_refused_with_a_useful_reason() -> None:
    kind, _ = _kind()
    with pytest.raises(InvalidMessage, match="'s3' is not handled by `scrapy crawl ftp`"):
        kind.parse(json.dumps({**TASK, "source_type": "s3", "config": {
            "bucket": "b-1", "access_key": "a", "secret_access_key": "s"}}))  # fmt: skip


@pytest.mark.parametrize("bad", [{"job_id": ".."}, {"channel_id": "a/b"}, {"job_id": ""}])
def test_ids_that_cannot_name_a_folder_are_invalid(bad: dict[str, str]) -> None:
    kind, _ = _kind()
    with pytest.raises(ValueError):
        kind.parse(json.dumps({**TASK, **bad}))


def test_a_failure_of_hydra_itself_requeues_the_task_then_dead_letters_it() -> None:
    kind, _ = _kind(HYDRA_FETCH_MAX_ATTEMPTS=2, HYDRA_RETRY_DELAY_SECONDS=3)
    run = _run(kind, TASK)
    outcome = kind.on_failure(run, RunFailure("start_error", "store unreachable"))
    (requeue,) = outcome.requeue
    assert json.loads(requeue.payload)["attempt"] == 1 and requeue.delay == 3
    again = _run(kind, json.loads(requeue.payload))
    final = kind.on_failure(again, RunFailure("start_error", "store unreachable"))
    assert final.requeue == []
    entry = json.loads(final.deadletter[0])
    assert entry["reason"] == "task_failed" and "hunter2" not in entry["payload"]


def test_replay_resets_the_attempts() -> None:
    replayed = json.loads(FetchTaskKind.replay_payload(json.dumps({**TASK, "attempt": 4})))
    assert replayed["attempt"] == 0 and replayed["job_id"] == "job_1"
