"""`scrapy deadletter` as an operator runs it, against a real redis-server (or a local file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from crawlers.deadletters import RedisDeadLetterStore
from crawlers.models import DeadLetterEntry, PriceBatch
from tests.conftest import ROOT, worker_env
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.integration

DL = "hydra:deadletter"
PRICES = "hydra:prices:batches"
OTHER = "hydra:other:tasks"


def batch(batch_id: str, attempt: int = 4) -> str:
    ids = [f"{batch_id}-1", f"{batch_id}-2"]
    return PriceBatch(run_id="r1", batch_id=batch_id, ids=ids, attempt=attempt).model_dump_json()


def entry(batch_id: str = "b1", **fields: Any) -> DeadLetterEntry:
    values: dict[str, Any] = {
        "reason": "max_attempts",
        "error": f"http_429 for id {batch_id}-1 (region default, attempt 4)",
        "source": PRICES,
        "payload": batch(batch_id),
        "kind": "price_batch",
    }
    return DeadLetterEntry.build(**{**values, **fields})


def store(client: redis.Redis, *entries: DeadLetterEntry) -> list[DeadLetterEntry]:
    client.rpush(DL, *(e.model_dump_json() for e in entries))
    return list(entries)


def batch_ids(client: redis.Redis, key: str = PRICES) -> list[str]:
    return [PriceBatch.model_validate_json(raw).batch_id for raw in client.lrange(key, 0, -1)]


def ids_in(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["id"] for raw in client.lrange(DL, 0, -1)]


def deadletter(*args: str, expect: int = 0, **settings: object) -> subprocess.CompletedProcess[str]:
    process = subprocess.run(
        [sys.executable, "-m", "scrapy", "deadletter", *args],
        cwd=ROOT,
        env=worker_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == expect, process.stdout + process.stderr
    return process


def test_list_shows_one_line_per_entry_filters_and_counts(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url: dict[str, Any] = {"HYDRA_REDIS_URL": redis_server.url}
    first, poison, other = store(
        redis_client,
        entry("b1", error="x" * 300),
        entry("b2", reason="poison"),
        entry("b3", source=OTHER, kind="fetch"),
    )

    lines = deadletter("list", **url).stdout.splitlines()

    assert len(lines) == 4 and lines[-1].startswith("3 entries in redis://127.0.0.1:")
    cells = lines[0].split()
    assert cells[:2] == ["1", first.id[:12]]
    assert cells[3:6] == ["max_attempts", "price_batch", PRICES]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[2])  # to the second, UTC
    assert lines[0].endswith("x" * 77 + "...")  # the error, cut to 80 characters
    assert lines[2].split()[:2] == ["3", other.id[:12]] and OTHER in lines[2]

    out = deadletter("list", "--reason", "poison", "--reason", "max_attempts", "--source", PRICES,
                     "--limit", "1", **url).stdout.splitlines()  # fmt: skip
    assert [line.split()[1] for line in out[:-1]] == [first.id[:12]]
    assert out[-1].startswith("2 of 3 entries in ") and out[-1].endswith(", first 1 shown")

    listed = deadletter("list", "--json", "--kind", "price_batch", **url)
    rows = [json.loads(text) for text in listed.stdout.splitlines()]
    assert [(row["position"], row["id"]) for row in rows] == [(1, first.id), (2, poison.id)]
    assert DeadLetterEntry.model_validate({k: v for k, v in rows[1].items() if k != "position"})
    assert "2 of 3 entries" in listed.stderr


def test_show_prints_the_full_entry_by_position_or_id(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first, second = store(redis_client, entry("b1"), entry("b2", details={"row_key": "r1/7"}))

    shown = deadletter("show", second.id[:10], "1", HYDRA_REDIS_URL=redis_server.url).stdout
    decoder, documents, rest = json.JSONDecoder(), [], shown.strip()
    while rest:
        document, end = decoder.raw_decode(rest)
        documents.append(document)
        rest = rest[end:].strip()
    assert documents == [second.model_dump(mode="json"), first.model_dump(mode="json")]

    missing = deadletter("show", "1", "9", "ffffffff", expect=1, HYDRA_REDIS_URL=redis_server.url)
    assert "no entry at position 9" in missing.stderr
    assert "no entry with id ffffffff" in missing.stderr
    assert json.loads(missing.stdout)["id"] == first.id


def test_replay_pushes_the_selected_payloads_with_attempt_reset_and_removes_only_them(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.rpush(PRICES, "waiting")
    _, second, third, fourth = store(
        redis_client, entry("b1"), entry("b2"), entry("b3", source=OTHER, kind=""), entry("b4")
    )

    out = deadletter("replay", "3", second.id, "1", HYDRA_REDIS_URL=redis_server.url).stdout

    pushed = redis_client.lrange(PRICES, 0, -1)
    assert pushed[0] == "waiting" and len(pushed) == 3
    replayed = [PriceBatch.model_validate_json(payload) for payload in pushed[1:]]
    assert [b.batch_id for b in replayed] == ["b2", "b1"]  # in the order they were named
    assert [b.attempt for b in replayed] == [0, 0]
    assert redis_client.lrange(OTHER, 0, -1) == [third.payload]  # no kind: as stored
    assert ids_in(redis_client) == [fourth.id]
    assert "Replayed 3 of 3 selected entries, 0 refused" in out


def test_replay_by_filter_keep_and_dry_run(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url: dict[str, Any] = {"HYDRA_REDIS_URL": redis_server.url}
    first, poison, second = store(
        redis_client, entry("b1"), entry("b2", reason="poison"), entry("b3")
    )

    dry = deadletter("replay", "--reason", "max_attempts", "--dry-run", **url).stdout
    assert "Would replay 2 of 2 selected entries" in dry and '"attempt":0' in dry
    assert redis_client.llen(PRICES) == 0 and len(ids_in(redis_client)) == 3

    deadletter("replay", "--reason", "max_attempts", "--keep", **url)
    assert batch_ids(redis_client) == ["b1", "b3"]
    assert ids_in(redis_client) == [first.id, poison.id, second.id]

    deadletter("replay", "--source", PRICES, "--reason", "max_attempts", **url)
    assert redis_client.llen(PRICES) == 4 and ids_in(redis_client) == [poison.id]


def test_replay_refuses_entries_that_are_not_the_original_message(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    _, masked, cut, row, rejected = store(
        redis_client,
        entry("b1"),
        entry("b2", payload='{"run_id": "r", "api_key": "hunter2", "ids": ["1"]}'),
        entry("b3", max_bytes=30),
        entry("b4", reason="item_error", payload='{"id": "7", "price": "x"}'),
        entry("b5", reason="sink_rejected", payload='{"id": "8"}'),
    )
    assert masked.payload_redacted and cut.payload_truncated

    result = deadletter("replay", "--all", expect=1, HYDRA_REDIS_URL=redis_server.url)

    assert batch_ids(redis_client) == ["b1"]
    assert ids_in(redis_client) == [masked.id, cut.id, row.id, rejected.id]
    assert "payload_redacted" in result.stderr and "payload_truncated" in result.stderr
    assert result.stderr.count("item row") == 2
    assert "Replayed 1 of 5 selected entries, 4 refused" in result.stdout


def test_replay_and_purge_need_an_explicit_selection(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url: dict[str, Any] = {"HYDRA_REDIS_URL": redis_server.url}
    (only,) = store(redis_client, entry("b1"))
    usage_errors = [
        ["replay"],
        ["purge", "--yes"],
        ["replay", "1", "--all"],
        ["purge", "1", "--reason", "poison"],
        ["replay", "abc"],
    ]
    for args in usage_errors:
        assert "error:" in deadletter(*args, expect=2, **url).stderr
    assert redis_client.llen(PRICES) == 0 and ids_in(redis_client) == [only.id]


def test_purge_asks_for_yes_then_removes_only_the_selection(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    url: dict[str, Any] = {"HYDRA_REDIS_URL": redis_server.url}
    first, poison, second = store(
        redis_client, entry("b1"), entry("b2", reason="poison"), entry("b3")
    )

    asked = deadletter("purge", "--reason", "poison", expect=1, **url)
    assert asked.stdout.startswith("would remove 2  " + poison.id[:12]) and "--yes" in asked.stderr
    assert len(ids_in(redis_client)) == 3

    deadletter("purge", "--reason", "poison", "--yes", **url)
    assert ids_in(redis_client) == [first.id, second.id]
    gone = deadletter("purge", second.id, "7", "--yes", expect=1, **url)
    assert "no entry at position 7" in gone.stderr and "Removed 1 entry" in gone.stdout
    assert ids_in(redis_client) == [first.id]
    assert redis_client.llen(PRICES) == 0


def test_removal_is_by_value_so_concurrent_writers_and_operators_lose_nothing(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    first, _, _ = store(redis_client, entry("b1"), entry("b2"), entry("b3"))
    dead = RedisDeadLetterStore.from_url(redis_server.url, DL)
    try:
        read = dead.read()
        (late,) = store(redis_client, entry("b4"))  # a worker dead-letters meanwhile
        redis_client.lrem(DL, 1, first.model_dump_json())  # another operator purges
        assert dead.remove(read) == [False, True, True]
        assert ids_in(redis_client) == [late.id]

        read = dead.read()
        redis_client.lrem(DL, 1, late.model_dump_json())  # ...or replays it first
        assert dead.requeue(read[0], PRICES, "again", keep=False) == 0
        assert redis_client.llen(PRICES) == 0  # nothing pushed for an entry already taken

        (kept,) = store(redis_client, entry("b5", source="hydra:hash"))
        redis_client.hset("hydra:hash", "a", "b")
        assert dead.requeue(dead.read()[0], "hydra:hash", "again", keep=False) == -1
        assert ids_in(redis_client) == [kept.id]  # a failed push removed nothing
    finally:
        dead.close()


def test_embedded_mode_reads_and_purges_the_file_but_refuses_replay(tmp_path: Path) -> None:
    path = tmp_path / "deadletter.jsonl"
    first, second = entry("b1"), entry("b2")
    path.write_text(f"{first.model_dump_json()}\n{second.model_dump_json()}\n" + '{"id": "to')
    settings: dict[str, Any] = {"HYDRA_DEADLETTER_PATH": path}

    listed = deadletter("list", **settings).stdout
    assert "3 entries in " + str(path) in listed and "incomplete last line" in listed

    refused = deadletter("replay", "1", expect=1, **settings)
    assert "embedded mode" in refused.stderr and "HYDRA_REDIS_URL" in refused.stderr

    deadletter("purge", first.id[:8], "--yes", **settings)
    assert path.read_text() == second.model_dump_json() + "\n" + '{"id": "to\n'


def test_the_redis_password_is_never_printed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        client = server.client()
        store(client, entry("b1", payload="not a batch"))
        client.close()
        listed = deadletter("list", HYDRA_REDIS_URL=server.url)
        assert "redis://:***@127.0.0.1" in listed.stdout
        replayed = deadletter("replay", "--all", expect=1, HYDRA_REDIS_URL=server.url)
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        denied = deadletter("list", expect=1, HYDRA_REDIS_URL=wrong)
        assert "Redis error at redis://:***@" in denied.stderr
    finally:
        server.stop()
    unreachable = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    down = deadletter("purge", "--all", "--yes", expect=1, HYDRA_REDIS_URL=unreachable)
    for process in (listed, replayed, denied, down):
        assert "s3cret-pw" not in process.stdout + process.stderr
        assert "wrong-pw" not in process.stdout + process.stderr


def test_invalid_settings_exit_2_with_one_line_each() -> None:
    result = deadletter("list", expect=2, HYDRA_QUEUE_PREFETCH=0, HYDRA_REDIS_URL="redis://:pw@h")
    assert result.stderr.startswith("Configuration error: HYDRA_QUEUE_PREFETCH")
