"""A full disk under real ``scrapy crawl prices`` workers: nothing is acked that is not durable.

The JSON-lines sink is written onto a really full filesystem (see ``tests/fullfs.py``:
a small tmpfs when this machine lets us mount one, else RLIMIT_FSIZE; the test id
says which ran). The previous design lost rows silently on a full disk while its
summary counted them as stored; these tests pin down what must hold instead:

- while the sink fails, the worker acks nothing, checkpoints nothing, keeps (and
  renews) its leases, claims nothing new, and logs one ERROR, not a flood;
- at every moment, every ID is either durable in the sink file or still in Redis;
- when space comes back, the worker finishes: every ID once, no torn line, exit 0;
- a worker stopped while the sink still fails exits non-zero, leaves nothing
  leased, and gives back every message whose rows are not durable, so another
  worker finishes the job.

Both variants assert the same guarantees. "Space comes back" deletes the tmpfs
filler, or raises the running worker's RLIMIT_FSIZE with prlimit(2); scenario 2
(worker A stopped on the full disk, worker B without the limit finishes from
Redis, their files together hold every ID) runs on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from crawlers.queues.redis import helper_key
from crawlers.sandbox import SandboxServer
from tests.conftest import read_jsonl, read_summary, worker_env
from tests.fullfs import FullDisk, Worker, full_disk, variants
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = "hydra:prices:batches"
READY, DELAYED, LEASES, HELD = (
    helper_key(KEY, name) for name in ("ready", "delayed", "leases", "held")
)
#: what the worker may still write to its sink file (about 65 rows of ~250 bytes)
ROOM = 16 * 1024
#: the tmpfs: room enough for all 1,000 rows (~245 KiB) once the filler is gone
CAPACITY = 512 * 1024
FLUSH_FAILED = "Flushing sinks failed"
STILL_FAILING = "Sinks still failing"
RECOVERED = "Sinks recovered after"


# -- what is in Redis, and what is in the file ----------------------------------------


def _batch_ids(payload: str) -> list[str]:
    ids: list[str] = json.loads(payload)["ids"]
    return ids


def _envelope(envelope: str) -> tuple[str, str]:
    """``(message id, payload)`` of a message as the lease queue keeps it."""
    message_id, _deliveries, payload = envelope.split("\n", 2)
    return message_id, payload


@dataclass(frozen=True)
class QueueState:
    """One atomic reading of the lease queue's keys."""

    waiting: tuple[str, ...]  # payloads on the public list, never claimed
    ready: tuple[str, ...]  # envelopes: released, reclaimed, requeued
    delayed: tuple[str, ...]  # envelopes: retries not yet due
    held: dict[str, str]  # lease -> envelope (payload = last checkpoint)
    leases: dict[str, float]  # lease -> deadline (ms, server clock)

    @classmethod
    def read(cls, client: redis.Redis) -> QueueState:
        with client.pipeline(transaction=True) as pipe:
            pipe.lrange(KEY, 0, -1)
            pipe.lrange(READY, 0, -1)
            pipe.zrange(DELAYED, 0, -1)
            pipe.hgetall(HELD)
            pipe.zrange(LEASES, 0, -1, withscores=True)
            waiting, ready, delayed, held, leases = pipe.execute()
        return cls(tuple(waiting), tuple(ready), tuple(delayed), held, dict(leases))

    def ids(self) -> set[str]:
        """Every ID some message in Redis still asks for."""
        payloads = [*self.waiting]
        payloads += [_envelope(e)[1] for e in (*self.ready, *self.delayed, *self.held.values())]
        return {price_id for payload in payloads for price_id in _batch_ids(payload)}

    def held_messages(self) -> set[str]:
        return {_envelope(envelope)[0] for envelope in self.held.values()}

    def ready_messages(self) -> set[str]:
        return {_envelope(envelope)[0] for envelope in self.ready}


def strict_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a sink file a worker has left: no torn line, each line one JSON object."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path} ends with a torn line: {data[-300:]!r}"
    rows = []
    for number, line in enumerate(data.decode("utf-8").split("\n")[:-1], 1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            pytest.fail(f"{path}:{number} is not a JSON row ({exc}): {line[:300]!r}")
        assert isinstance(row, dict) and isinstance(row.get("id"), str), f"{path}:{number}"
        rows.append(row)
    return rows


def assert_nothing_lost(client: redis.Redis, sink: Path, ids: list[str], when: str) -> None:
    """At-least-once, checked on a running worker: every ID is in the sink file or
    still in Redis. Redis is read first: an ID acked after that reading was made
    durable before its ack, so it is in the file read next."""
    state = QueueState.read(client)
    durable = {row["id"] for row in read_jsonl(sink)}  # a write under way may be torn
    missing = set(ids) - durable - state.ids()
    assert not missing, (
        f"{when}: {len(missing)} IDs are neither in {sink.name} nor in Redis, i.e. "
        f"acked without being durable: {sorted(missing)[:10]}"
    )


def stored_in_summary(summary: dict[str, Any]) -> int:
    (line,) = [line for line in summary["summary"] if line.startswith("IDs stored:")]
    return int(line.split()[2])


# -- workers on a full disk --------------------------------------------------------------


def push_batches(client: redis.Redis, ids: list[str], size: int = 20) -> None:
    client.rpush(
        KEY,
        *[
            json.dumps({"run_id": "full", "batch_id": f"b{n:04d}", "ids": ids[n : n + size]})
            for n in range(0, len(ids), size)
        ],
    )


@dataclass
class Lab:
    """A full disk, a Redis server and the workers of one scenario (killed at the end)."""

    disk: FullDisk
    workdir: Path
    redis_url: str
    workers: list[Worker] = field(default_factory=list)

    def sink(self, name: str) -> Path:
        return self.disk.directory / f"{name}.jsonl"

    def start(
        self, name: str, template: str, *, limited: bool, sink: Path, **settings: object
    ) -> Worker:
        """A distributed worker; ``limited``: under the full disk's limit (rlimit)."""
        env = worker_env(
            HYDRA_REDIS_URL=self.redis_url,
            HYDRA_PRICE_URL_TEMPLATE=template,
            # small flushes: the file fills up to the last row that fits
            HYDRA_SINKS=f"jsonl://{quote(str(sink))}?flush_rows=5",
            HYDRA_SUMMARY_PATH=self.workdir / f"{name}.summary.json",
            HYDRA_DEADLETTER_PATH=self.workdir / f"{name}.deadletter.jsonl",
            HYDRA_ACK_INTERVAL_SECONDS=0.2,
            HYDRA_SINK_RETRY_MAX_SECONDS=0.5,
            **settings,
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stray writes under the file size limit
        preexec = self.disk.preexec_fn() if limited else None
        worker = Worker(name, self.workdir / f"{name}.log", env, preexec)
        self.workers.append(worker)
        return worker

    def summary(self, name: str) -> dict[str, Any]:
        return read_summary(self.workdir / f"{name}.summary.json")


@pytest.fixture(params=variants())
def lab(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> Iterator[Lab]:
    with full_disk(request.param, tmp_path, room=ROOM, capacity=CAPACITY) as disk:
        lab = Lab(disk, tmp_path, redis_server.url)
        try:
            yield lab
        finally:
            for worker in lab.workers:  # before the tmpfs is unmounted
                worker.kill()


# -- 1. the disk fills mid-run, then space comes back ------------------------------------


def test_disk_fills_mid_run_then_space_comes_back(lab: Lab, redis_client: redis.Redis) -> None:
    ids = [f"id-{n:04d}" for n in range(1000)]
    push_batches(redis_client, ids)
    sink = lab.sink("worker")
    with SandboxServer() as sandbox:
        worker = lab.start(
            "worker", sandbox.url_template, limited=True, sink=sink,
            HYDRA_QUEUE_PREFETCH=4, HYDRA_IDLE_CLOSE_SECONDS=2,
        )  # fmt: skip
        worker.wait_for_log(FLUSH_FAILED)
        time.sleep(0.5)  # a claim already on its way when the flush failed lands
        failing = QueueState.read(redis_client)
        assert_nothing_lost(redis_client, sink, ids, "when the flush failed")
        worker.wait_for_log(STILL_FAILING, times=2)  # retried, with back-off
        still = QueueState.read(redis_client)
        assert_nothing_lost(redis_client, sink, ids, "while the sink kept failing")
        # nothing acked, nothing checkpointed (same leases, same payloads), nothing claimed
        assert failing.leases
        assert still.leases.keys() == failing.leases.keys()
        assert still.held == failing.held
        assert still.waiting == failing.waiting != ()
        assert still.ready == failing.ready
        assert len(read_jsonl(sink)) < len(ids), "the disk should have filled up mid-run"

        lab.disk.release(worker.pid)
        code = worker.wait_exit(90)
        per_id = sandbox.stats()["per_id"]

    assert code == 0, worker.tail()
    rows = strict_rows(sink)
    assert sorted(row["id"] for row in rows) == ids  # every ID, each exactly once
    assert per_id == dict.fromkeys(ids, 1)  # rows were kept, not fetched again
    log = worker.log()
    assert log.count(FLUSH_FAILED) == 1
    assert log.count(RECOVERED) == 1
    summary = lab.summary("worker")
    assert stored_in_summary(summary) == len(rows)
    stats = summary["stats"]
    assert "hydra/worker/failed" not in stats
    assert stats["hydra/queue/acked"] == len(ids) // 20
    assert stats["hydra/sink/flush_errors"] >= 3
    final = QueueState.read(redis_client)
    assert final == QueueState((), (), (), {}, {})


# -- 2. a disk that stays full: the worker is stopped --------------------------------------


@dataclass
class StaysFull:
    """What one run of scenario 2 showed (one run serves the tests below)."""

    variant: str
    ids: list[str]
    failing: QueueState  # just after the first failed flush
    renewed: QueueState  # after retries, once every lease was renewed
    errors_while_failing: int
    retries_while_failing: int
    exit_code: int
    log: str
    stopped: QueueState  # after the worker exited
    sink: Path
    summary: dict[str, Any]
    lost_while_running: str | None  # what assert_nothing_lost said, if it failed
    finisher_exit_code: int
    finisher_sink: Path
    tail: str


@pytest.fixture(scope="module", params=variants())
def stays_full(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[StaysFull]:
    """Worker A fills the disk, keeps failing, is stopped (SIGINT); worker B, without
    the limit, then finishes what is left in Redis."""
    workdir = tmp_path_factory.mktemp(f"stays-full-{request.param}")
    client = redis_server.client()
    client.flushall()
    ids = [f"id-{n:04d}" for n in range(400)]
    push_batches(client, ids)
    with (
        full_disk(request.param, workdir, room=ROOM, capacity=CAPACITY) as disk,
        SandboxServer() as sandbox,
    ):
        lab = Lab(disk, workdir, redis_server.url)
        sink = lab.sink("a")
        try:
            a = lab.start(
                "a", sandbox.url_template, limited=True, sink=sink,
                HYDRA_QUEUE_PREFETCH=2, HYDRA_IDLE_CLOSE_SECONDS=0, HYDRA_QUEUE_LEASE_SECONDS=6,
            )  # fmt: skip
            a.wait_for_log(FLUSH_FAILED)
            time.sleep(0.5)
            failing = QueueState.read(client)
            lost: str | None = None
            try:
                assert_nothing_lost(client, sink, ids, "while the sink failed")
            except AssertionError as exc:
                lost = str(exc)

            def renewed_all() -> bool:
                leases = QueueState.read(client).leases
                return all(leases.get(lease, 0) > t for lease, t in failing.leases.items())

            a.wait_until(renewed_all, "renewal of every held lease", timeout=20)
            a.wait_for_log(STILL_FAILING, times=2)
            renewed = QueueState.read(client)
            errors, retries = a.count(FLUSH_FAILED), a.count(STILL_FAILING)
            a.interrupt()
            exit_code = a.wait_exit(60)
            stopped = QueueState.read(client)
            b_sink = workdir / "b.jsonl"  # not on the full disk, not limited
            b = lab.start(
                "b", sandbox.url_template, limited=False, sink=b_sink,
                HYDRA_QUEUE_PREFETCH=4, HYDRA_IDLE_CLOSE_SECONDS=1,
            )  # fmt: skip
            b_code = b.wait_exit(90)
        finally:
            for worker in lab.workers:
                worker.kill()
        yield StaysFull(
            variant=request.param,
            ids=ids,
            failing=failing,
            renewed=renewed,
            errors_while_failing=errors,
            retries_while_failing=retries,
            exit_code=exit_code,
            log=a.log(),
            stopped=stopped,
            sink=sink,
            summary=lab.summary("a"),
            lost_while_running=lost,
            finisher_exit_code=b_code,
            finisher_sink=b_sink,
            tail=a.tail() + "\n" + b.tail(),
        )
    client.close()


def test_full_disk_holds_leases_claims_nothing_and_logs_one_error(stays_full: StaysFull) -> None:
    run = stays_full
    assert run.lost_while_running is None, run.lost_while_running
    # keeps its leases (and renews them), acks and checkpoints nothing
    assert run.failing.leases
    assert run.renewed.leases.keys() == run.failing.leases.keys()
    assert run.renewed.held == run.failing.held
    # claims nothing new although there is more to claim
    assert run.renewed.waiting == run.failing.waiting != ()
    assert run.renewed.ready == run.failing.ready
    # one ERROR, then WARNINGs with back-off; still one ERROR after the stop
    assert run.errors_while_failing == 1
    assert run.retries_while_failing >= 2
    assert run.log.count(FLUSH_FAILED) == 1
    assert RECOVERED not in run.log


def test_worker_stopped_on_a_full_disk_fails_and_leaves_nothing_leased(
    stays_full: StaysFull,
) -> None:
    run = stays_full
    assert run.exit_code == 1, run.tail
    assert run.summary["stats"]["hydra/worker/failed"] == "sink_failed"
    assert any(line.startswith("FAILED:") for line in run.summary["summary"])
    assert run.stopped.leases == {}
    assert run.stopped.held == {}
    rows = strict_rows(run.sink)  # cut back to its last durable row: no torn line
    stored = [row["id"] for row in rows]
    assert len(set(stored)) == len(stored)
    assert len(stored) < len(run.ids)
    assert set(stored) <= set(run.ids)


def test_worker_stopped_on_a_full_disk_gives_back_what_is_not_durable(
    stays_full: StaysFull,
) -> None:
    run = stays_full
    durable = {row["id"] for row in strict_rows(run.sink)}
    missing = set(run.ids) - durable - run.stopped.ids()
    assert not missing, (
        f"{len(missing)} IDs acked at shutdown without being durable: {sorted(missing)[:10]}"
    )
    # every message it held while failing is back, none acked
    assert run.renewed.held_messages() <= run.stopped.ready_messages()
    stats = run.summary["stats"]
    assert stats.get("hydra/queue/released", 0) == len(run.renewed.leases)
    # and another worker finishes the job: nothing is lost
    assert run.finisher_exit_code == 0, run.tail
    finished = {row["id"] for row in strict_rows(run.finisher_sink)}
    assert durable | finished == set(run.ids)


def test_worker_stopped_on_a_full_disk_counts_only_durable_rows_as_stored(
    stays_full: StaysFull,
) -> None:
    run = stays_full
    rows = strict_rows(run.sink)
    assert stored_in_summary(run.summary) <= len(rows), run.summary["summary"]
