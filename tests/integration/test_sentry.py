"""Sentry (issue 13): the real sentry-sdk sends its envelopes to a local HTTP receiver."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli
import pytest
import sentry_sdk
from scrapy import Request, Spider, signals
from scrapy.exceptions import NotConfigured
from scrapy.http import TextResponse
from scrapy.utils.test import get_crawler
from twisted.python.failure import Failure

from crawlers.config import HydraConfig
from crawlers.extensions.sentry import SentryReporter
from crawlers.extensions.task_ledger import dead_lettered
from crawlers.models import DeadLetterEntry
from crawlers.monitoring.sentry import close_sentry, init_sentry
from crawlers.services.command import configure_service_logging
from tests.conftest import run_worker
from tests.servers import free_port

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-sekrit"
TOKEN = "tok-9f8e7d6c5b4a"
SECRET_URL = f"https://alice:{PASSWORD}@api.example.test/v1/prices?token={TOKEN}&page=2"


@dataclass
class Receiver:
    """Envelopes POSTed to ``/api/<project>/envelope/``, decompressed."""

    port: int
    bodies: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def add(self, path: str, body: bytes) -> None:
        with self.lock:
            self.paths.append(path)
            self.bodies.append(body)

    def items(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(item header, payload) of every JSON item of every envelope."""
        found = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            _, _, rest = body.partition(b"\n")  # the envelope header
            while rest.strip():
                line, _, rest = rest.partition(b"\n")
                header = json.loads(line)
                length = header.get("length")
                if length is None:
                    raw, _, rest = rest.partition(b"\n")
                else:
                    raw, rest = rest[:length], rest[length + 1 :]
                if header.get("content_type", "application/json") == "application/json":
                    found.append((header, json.loads(raw)))
        return found

    def events(self) -> list[dict[str, Any]]:
        return [payload for header, payload in self.items() if header.get("type") == "event"]

    def wait_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sentry_sdk.flush(timeout=2)
            events = self.events()
            if len(events) >= count:
                return events
            time.sleep(0.05)
        raise AssertionError(f"{len(self.events())} events arrived, expected {count}")

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    box = Receiver(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "br":  # sentry-sdk prefers brotli when it is installed
                body = brotli.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding:
                raise AssertionError(f"unexpected Content-Encoding {encoding}")
            box.add(self.path, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:  # the page the real crawl's spider fails on
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html></html>")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        close_sentry()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class PricesSpider(Spider):
    name = "sentry_prices"
    task_kind = "price_batch"


def _crawler(settings: dict[str, Any]) -> Any:
    crawler = get_crawler(PricesSpider, {"EXTENSIONS": {}, **settings})
    crawler.spider = PricesSpider()
    return crawler


def _spider_error(crawler: Any, error: Exception, meta: dict[str, Any]) -> None:
    request = Request(SECRET_URL, meta=meta)
    response = TextResponse(request.url, body=b"{}", encoding="utf-8", request=request)
    try:
        raise error
    except Exception as exc:  # a real traceback, as in a callback
        failure = Failure(exc)
    crawler.signals.send_catch_log(
        signals.spider_error, failure=failure, response=response, spider=crawler.spider
    )


def test_spider_error_arrives_with_tags_and_without_secrets(receiver: Receiver) -> None:
    crawler = _crawler(
        {
            "HYDRA_SENTRY_DSN": receiver.dsn,
            "HYDRA_JOB_ID": "job-42",
            "HYDRA_REGION": "eu-west",
            "HYDRA_SENTRY_ENVIRONMENT": "test",
        }
    )
    reporter = SentryReporter.from_crawler(crawler)
    reporter.spider_opened(crawler.spider)
    _spider_error(
        crawler,
        RuntimeError(f"fetch of {SECRET_URL} failed: token={TOKEN} password: {PASSWORD}"),
        {"channel_id": "ch-007"},
    )
    assert reporter is not None

    (event,) = receiver.wait_events(1)
    assert all(path == "/api/1/envelope/" for path in receiver.paths)
    tags = event["tags"]
    assert tags["task_kind"] == "price_batch"
    assert tags["spider"] == "sentry_prices"
    assert tags["job"] == "job-42"
    assert tags["region"] == "eu-west"
    assert tags["channel"] == "ch-007"
    assert tags["process"] == "worker"
    assert event["environment"] == "test"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert "api.example.test" in exception["value"]
    assert "alice:***@" in exception["value"]
    assert event["contexts"]["request"]["url"].startswith("https://alice:***@api.example.test")
    assert exception["stacktrace"]["frames"]  # the real traceback came along
    raw = receiver.raw()
    assert PASSWORD.encode() not in raw
    assert TOKEN.encode() not in raw
    assert b"publickey" not in raw.split(b"\n", 1)[1]  # the DSN's key only in the header


def test_a_real_crawl_reports_its_spider_error(receiver: Receiver) -> None:
    secret_url = f"http://bob:{PASSWORD}@127.0.0.1:{receiver.port}/page?token={TOKEN}"
    log = run_worker(
        "-s",
        "SPIDER_MODULES=tests.spiders",
        "-a",
        f"url=http://127.0.0.1:{receiver.port}/page",
        "-a",
        f"secret=retrying {secret_url} with access_token={TOKEN}",
        spider="sentry_broken",
        HYDRA_SENTRY_DSN=receiver.dsn,
        HYDRA_REGION="ap-south",
    )
    assert "Spider error processing" in log
    (event,) = receiver.wait_events(1)  # one event: the log line is not a second one
    assert event["tags"]["spider"] == "sentry_broken"
    assert event["tags"]["task_kind"] == "sentry_broken"  # no task kind: the spider's name
    assert event["tags"]["region"] == "ap-south"
    assert event["tags"]["channel"] == "ch-broken"
    assert event["tags"]["process"] == "worker"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert f"bob:***@127.0.0.1:{receiver.port}/page?token=***" in exception["value"]
    assert any(frame["function"] == "parse" for frame in exception["stacktrace"]["frames"])
    raw = receiver.raw()
    assert PASSWORD.encode() not in raw
    assert TOKEN.encode() not in raw


def test_dead_letter_item_error_is_a_message_event(receiver: Receiver) -> None:
    crawler = _crawler({"HYDRA_SENTRY_DSN": receiver.dsn, "HYDRA_REGION": "us-east"})
    reporter = SentryReporter.from_crawler(crawler)  # kept: signals hold weak references
    entry = DeadLetterEntry.build(
        reason="item_error",
        error=f"sink refused row: {SECRET_URL}",
        source="hydra:prices",
        payload=json.dumps({"id": "p1", "channel_id": "ch-9", "api_key": TOKEN}),
        kind="price_batch",
    )
    crawler.signals.send_catch_log(dead_lettered, entry=entry)
    other = DeadLetterEntry.build(
        reason="invalid_message", error="bad JSON", source="hydra:prices", payload="{"
    )
    crawler.signals.send_catch_log(dead_lettered, entry=other)
    assert reporter is not None

    (event,) = receiver.wait_events(1)
    assert event["level"] == "error"
    assert event["message"].startswith("dead letter item_error: sink refused row")
    assert event["tags"]["channel"] == "ch-9"
    assert event["tags"]["region"] == "us-east"
    assert event["tags"]["deadletter_reason"] == "item_error"
    assert event["tags"]["task_kind"] == "price_batch"
    raw = receiver.raw()
    assert PASSWORD.encode() not in raw
    assert TOKEN.encode() not in raw


def test_logged_service_error_is_reported_scrubbed(receiver: Receiver) -> None:
    config = HydraConfig.model_validate({"sentry_dsn": receiver.dsn, "job_id": "j-1"})
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_service_logging(config, "scheduler")
        assert init_sentry(config, "scheduler")  # idempotent
        try:
            raise ConnectionError(f"redis://:{PASSWORD}@10.0.0.5:6379/0 refused")
        except ConnectionError:
            logging.getLogger("crawlers.scheduler").exception(
                "job %s failed, secret=%s", "j-1", PASSWORD
            )
        (event,) = receiver.wait_events(1)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    assert event["tags"]["process"] == "scheduler"
    assert event["tags"]["job"] == "j-1"
    assert event["exception"]["values"][0]["type"] == "ConnectionError"
    assert event["exception"]["values"][0]["value"] == "redis://:***@10.0.0.5:6379/0 refused"
    assert event["logentry"]["formatted"] == "job j-1 failed, secret=***"
    assert event["logentry"]["params"] == []
    assert PASSWORD.encode() not in receiver.raw()


def test_without_dsn_nothing_is_configured_or_sent(receiver: Receiver) -> None:
    crawler = _crawler({"HYDRA_JOB_ID": "job-1"})
    with pytest.raises(NotConfigured, match="HYDRA_SENTRY_DSN"):
        SentryReporter.from_crawler(crawler)
    assert not init_sentry(HydraConfig.from_crawler(crawler), "worker")
    assert not sentry_sdk.get_client().is_active()
    sentry_sdk.capture_message("nobody hears this")
    logging.getLogger("crawlers.test").error("nor this")
    sentry_sdk.flush(timeout=1)
    time.sleep(0.2)
    assert receiver.bodies == []


def test_the_project_enables_the_reporter() -> None:
    from crawlers import settings

    assert "crawlers.extensions.sentry.SentryReporter" in settings.EXTENSIONS
