"""The worker's /metrics: off without HYDRA_METRICS_PORT; Scrapy stats become Prometheus
counters by delta; queue depth, leases and flush times are sampled; the file_sd file
gets the worker's target while it runs, under concurrent writers."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from scrapy.exceptions import NotConfigured

from crawlers.extensions.metrics import WorkerMetrics
from crawlers.models import PriceBatch
from crawlers.monitoring import sd_file
from crawlers.monitoring.worker import WorkerMetricSet
from crawlers.queues.memory import MemoryQueue
from tests.unit.helpers import price_crawler


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_off_unless_a_port_is_set(tmp_path: Path) -> None:
    crawler, _spider, _ledger = price_crawler(HYDRA_TOPICS_PATH=str(tmp_path))
    assert crawler.get_extension(WorkerMetrics) is None
    with pytest.raises(NotConfigured, match="set HYDRA_METRICS_PORT to enable"):
        WorkerMetrics.from_crawler(crawler)
    crawler, _spider, _ledger = price_crawler(HYDRA_METRICS_PORT="")
    assert crawler.get_extension(WorkerMetrics) is None
    crawler, _spider, _ledger = price_crawler(HYDRA_METRICS_PORT="0")
    assert isinstance(crawler.get_extension(WorkerMetrics), WorkerMetrics)


def test_stats_become_counters_by_delta() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetricSet(registry, kind="price_batch", region="eu-west")
    assert _value(registry, "hydra_items_total", kind="price_batch", region="eu-west") == 0
    stats: dict[str, Any] = {
        "downloader/response_status_count/200": 5,
        "downloader/response_status_count/429": 1,
        "downloader/exception_type_count/twisted.internet.error.ConnectionRefusedError": 2,
        "item_scraped_count": 5,
        "hydra/sink/items_stored": 3,
        "hydra/deadletter/max_attempts": 1,
        "hydra/heal/needs_review": 1,
        "hydra/heal/healed": 2,
        "hydra/queue/lease_lost": 1,
        "hydra/queue/claimed": 2,
        "hydra/sink/flush_errors": 1,
        "start_time": "not a number",
        "hydra/worker/failed": "sink_failed",
    }
    metrics.sync(stats)
    stats["downloader/response_status_count/200"] = 9
    stats["hydra/queue/ack_lease_lost"] = 2
    stats["hydra/sink/items_stored"] = 9
    metrics.sync(stats)
    metrics.sync(stats)  # nothing new: nothing added
    labels = {"kind": "price_batch", "region": "eu-west"}
    assert _value(registry, "hydra_requests_total", status="200", **labels) == 9
    assert _value(registry, "hydra_requests_total", status="429", **labels) == 1
    assert _value(registry, "hydra_requests_total", status="error", **labels) == 2
    assert _value(registry, "hydra_items_total", **labels) == 5
    assert _value(registry, "hydra_items_stored_total", **labels) == 9
    assert _value(registry, "hydra_deadletter_total", reason="max_attempts") == 1
    assert _value(registry, "hydra_heals_total", outcome="needs_review") == 1
    assert _value(registry, "hydra_heals_total", outcome="healed") == 2
    assert _value(registry, "hydra_leases_lost_total") == 3
    assert _value(registry, "hydra_messages_claimed_total") == 2
    assert _value(registry, "hydra_sink_flush_errors_total") == 1
    assert _value(registry, "hydra_worker_failed") == 1


class FakeSink:
    def __init__(self) -> None:
        self.flushes = 0

    def dirty(self) -> bool:
        return True

    async def flush(self) -> list[Any]:
        await asyncio.sleep(0.01)
        self.flushes += 1
        return []


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_a_worker_serves_its_metrics_and_registers_in_the_sd_file(tmp_path: Path) -> None:
    sd_path = tmp_path / "sd" / "workers.json"
    crawler, spider, ledger = price_crawler(
        HYDRA_DEADLETTER_PATH=str(tmp_path / "dl.jsonl"),
        HYDRA_SINKS="",
        HYDRA_METRICS_PORT="0",
        HYDRA_METRICS_SD_FILE=str(sd_path),
        HYDRA_METRICS_INTERVAL_SECONDS="0.05",
        HYDRA_REGION="default",
        HYDRA_QUEUE_PREFETCH="1",
    )
    extension = crawler.get_extension(WorkerMetrics)
    assert extension is not None and crawler.stats is not None

    async def scenario() -> tuple[str, list[dict[str, Any]], int]:
        await ledger.spider_opened(spider)
        await extension.spider_opened(spider)
        queue = ledger.queue
        assert isinstance(queue, MemoryQueue)
        batches = [
            PriceBatch(run_id="r", batch_id=f"b{n}", ids=["1"]).model_dump_json() for n in range(3)
        ]
        await queue.push(batches)
        stream = ledger.consume()
        await anext(stream)  # one batch leased (prefetch 1)
        await stream.aclose()
        sink = FakeSink()
        ledger.add_flushable(sink)
        assert await ledger._flush(False)  # timed: one observation
        crawler.stats.inc_value("downloader/response_status_count/200", 7)
        crawler.stats.inc_value("item_scraped_count", 7)
        await asyncio.sleep(0.2)
        port = extension.port
        text = await asyncio.to_thread(_scrape, port)
        groups = sd_file.read_groups(sd_path)
        ledger.remove_flushable(sink)
        await ledger.spider_closed(spider, "finished")
        await extension.spider_closed(spider, "finished")
        assert extension.port == 0  # closed
        return text, groups, port

    text, groups, port = asyncio.run(asyncio.wait_for(scenario(), 30))
    labels = 'kind="price_batch",region="default"'
    assert f'hydra_requests_total{{{labels},status="200"}} 7.0' in text
    assert f"hydra_items_total{{{labels}}} 7.0" in text
    assert 'hydra_queue_depth{queue="hydra:prices:batches"} 2.0' in text
    assert "hydra_leases_held 1.0" in text
    assert "hydra_sink_flush_seconds_count 1.0" in text
    assert "hydra_sink_flushes_total 1.0" in text
    assert "process_cpu_seconds_total" in text
    assert groups == [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {"worker": ledger.worker_id, "spider": "prices"},
        }
    ]
    assert sd_file.read_groups(sd_path) == []  # removed on close
    with pytest.raises(OSError):
        _scrape(port)  # the server is gone


def test_concurrent_workers_never_corrupt_the_sd_file(tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    sd_file.add_target(path, "keep:1", {"worker": "keep"})
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for round_ in range(15):
                target = f"w{number}:{round_}"
                sd_file.add_target(path, target, {"worker": str(number)})
                json.loads(path.read_text())  # readers always see a whole list
                if round_ % 3:
                    sd_file.remove_target(path, target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    targets = sorted(group["targets"][0] for group in sd_file.read_groups(path))
    expected = sorted(["keep:1"] + [f"w{n}:{r}" for n in range(8) for r in range(0, 15, 3)])
    assert targets == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".workers.json.")]


def test_a_torn_sd_file_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    path.write_text('[{"targets": ["a:1"')
    sd_file.add_target(path, "b:2", {})
    assert sd_file.read_groups(path) == [{"targets": ["b:2"], "labels": {}}]


class FakeController:
    async def regions_view(self) -> list[dict[str, Any]]:
        return [
            {"name": "eu-west", "state": "quarantined"},
            {"name": "us-east", "state": "active"},
            {"name": "ap-south", "state": "idle"},
        ]


class FakeDB:
    def __init__(self, path: Path) -> None:
        from sqlalchemy import create_engine

        from crawlers.db.models import Base

        self.engine = create_engine(f"sqlite:///{path}")
        Base.metadata.tables["scheduled_jobs"].create(self.engine)

    def transaction(self, write: bool = False) -> Any:
        return self.engine.begin()


def _get(app: Any, path: str) -> tuple[int, str]:
    import httpx

    async def get() -> tuple[int, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get(path)
        return response.status_code, response.text

    return asyncio.run(get())


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_the_controllers_metrics_show_its_regions() -> None:
    from fastapi import FastAPI

    from crawlers.monitoring.services import controller_metrics

    app = FastAPI()
    app.mount("/metrics", controller_metrics(FakeController()))
    status, text = _get(app, "/metrics/")
    assert status == 200
    assert 'hydra_region_quarantined{region="eu-west"} 1.0' in text
    assert 'hydra_region_active{region="eu-west"} 0.0' in text
    assert 'hydra_region_active{region="us-east"} 1.0' in text
    assert 'hydra_service_info{service="controller"} 1.0' in text


def test_the_schedulers_metrics_count_jobs_by_task_and_state(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from fastapi import FastAPI

    from crawlers.db.models import Base
    from crawlers.monitoring.services import scheduler_metrics

    db = FakeDB(tmp_path / "state.db")
    jobs = Base.metadata.tables["scheduled_jobs"]
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        ("nightly", "succeeded", datetime(2026, 1, 1, tzinfo=UTC)),
        ("nightly", "succeeded", now),
        ("nightly", "failed", now),
        ("hourly", "running", None),
    ]
    with db.engine.begin() as connection:
        for number, (task, state, finished) in enumerate(rows):
            connection.execute(
                jobs.insert().values(
                    job_id=f"j{number}", task_name=task, attempt=1, priority=0, state=state,
                    fired_at=now, scheduled_for=now, finished_at=finished, stats_json={},
                )
            )  # fmt: skip
    app = FastAPI()
    app.mount("/metrics", scheduler_metrics(type("S", (), {"db": db})()))
    status, text = _get(app, "/metrics/")
    assert status == 200
    samples = _samples(text, "hydra_jobs")
    assert samples[(("state", "succeeded"), ("task", "nightly"))] == 2
    assert samples[(("state", "running"), ("task", "hourly"))] == 1
    stamp = f"{now.timestamp():.9e}"
    db.engine.dispose()
    assert f'hydra_job_last_success_timestamp_seconds{{task="nightly"}} {stamp}' in text


def test_the_lean_price_path_counts_requests_from_its_kinds_stats() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetricSet(registry, kind="price_batch", region="default")
    metrics.sync(
        {
            "hydra/prices/ids_fetched": 8,
            "hydra/prices/stopped/http_429": 2,
            "hydra/prices/stopped/download_error/TimeoutError": 1,
        }
    )
    labels = {"kind": "price_batch", "region": "default"}
    assert _value(registry, "hydra_requests_total", status="ok", **labels) == 8
    assert _value(registry, "hydra_requests_total", status="429", **labels) == 2
    assert _value(registry, "hydra_requests_total", status="error", **labels) == 1
