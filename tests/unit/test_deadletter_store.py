"""The dead-letter store: JSON-lines file rewrites, entry lookup, filters, replay rules."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from crawlers.config import HydraConfig, project_path
from crawlers.deadletters import (
    Filters,
    JsonLinesDeadLetterStore,
    RedisDeadLetterStore,
    StoredEntry,
    find,
    open_store,
    replay_plan,
)
from crawlers.models import DeadLetterEntry, PriceBatch
from crawlers.queues.memory import MemoryQueue

KINDS = {"price_batch": "crawlers.tasks.price_batches.PriceBatchKind"}
BATCH = PriceBatch(run_id="r1", batch_id="b1", ids=["7", "8"], attempt=4, reason="http_429")


def entry(**fields: Any) -> DeadLetterEntry:
    values: dict[str, Any] = {
        "reason": "max_attempts",
        "error": "http_429 for id 7",
        "source": "hydra:prices:batches",
        "payload": BATCH.model_dump_json(exclude_none=True),
        "kind": "price_batch",
    }
    return DeadLetterEntry.build(**{**values, **fields})


def line(value: DeadLetterEntry) -> str:
    return value.model_dump_json()


def append(path: Path, *lines: str) -> None:
    """As an embedded worker appends (the queue's own writer)."""
    MemoryQueue("q", path)._append_deadletter(list(lines))


def stored(value: DeadLetterEntry, position: int = 1) -> StoredEntry:
    return StoredEntry.parse(position, line(value).encode())


def test_read_tolerates_a_torn_last_line_and_keeps_garbage_visible(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    first, second = entry(), entry(reason="poison")
    append(path, line(first), "not json", line(second))
    with path.open("ab") as file:
        file.write(line(entry())[:40].encode())  # a writer killed mid-line

    entries = JsonLinesDeadLetterStore(path).read()

    assert [e.position for e in entries] == [1, 2, 3, 4]
    assert [e.id for e in entries] == [first.id, "", second.id, ""]
    assert entries[1].problem.startswith("not a dead-letter entry")
    assert entries[3].entry is None and "incomplete last line" in entries[3].problem


def test_a_missing_file_is_an_empty_dead_letter(tmp_path: Path) -> None:
    store = JsonLinesDeadLetterStore(tmp_path / "absent.jsonl")
    assert store.read() == []
    assert store.remove([stored(entry())]) == [False]
    assert not store.path.exists()


def test_remove_keeps_lines_appended_after_the_read(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    old, kept, late = entry(), entry(), entry(reason="poison")
    append(path, line(old), line(kept))
    store = JsonLinesDeadLetterStore(path)
    selected = store.read()[:1]
    append(path, line(late))  # a worker writes between `list` and `purge`

    assert store.remove(selected) == [True]

    assert [e.id for e in store.read()] == [kept.id, late.id]


def test_remove_takes_one_copy_of_a_duplicate_and_reports_what_was_gone(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    twice, other = entry(), entry()
    append(path, line(twice), line(other), line(twice))
    store = JsonLinesDeadLetterStore(path)
    first = store.read()[0]

    assert store.remove([first, stored(entry())]) == [True, False]
    assert [e.id for e in store.read()] == [other.id, twice.id]
    assert store.remove([first, first]) == [True, False]
    assert [e.id for e in store.read()] == [other.id]


def test_rewrite_ends_a_torn_line_so_later_appends_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    gone, kept, late = entry(), entry(), entry()
    append(path, line(gone), line(kept))
    with path.open("ab") as file:
        file.write(b'{"id": "torn')
    store = JsonLinesDeadLetterStore(path)

    assert store.remove(store.read()[:1]) == [True]
    append(path, line(late))

    entries = store.read()
    assert [e.id for e in entries] == [kept.id, "", late.id]
    assert entries[1].raw == b'{"id": "torn'  # kept as it was, now on its own line


def test_rewrite_is_atomic_and_keeps_the_file_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dl.jsonl"
    first, second = entry(), entry()
    append(path, line(first), line(second))
    path.chmod(0o640)
    before = path.read_bytes()
    store = JsonLinesDeadLetterStore(path)
    selected = store.read()[:1]

    def power_cut(fd: int) -> None:
        raise OSError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", power_cut)
        with pytest.raises(OSError, match="disk gone"):
            store.remove(selected)
    assert path.read_bytes() == before  # the old file stands whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == [
        "dl.jsonl"
    ]  # no temp file left

    inode = path.stat().st_ino
    assert store.remove(selected) == [True]
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_text() == line(second) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["dl.jsonl"]


def test_find_by_position_or_id_prefix() -> None:
    first, second = entry(id="aaaa1111" + "0" * 24), entry(id="aaaa2222" + "0" * 24)
    entries = [stored(first, 1), stored(second, 2)]

    assert find(entries, "2").entry == second
    assert find(entries, "aaaa1111").entry == first
    assert find(entries, "AAAA2222" + "0" * 24).entry == second
    with pytest.raises(LookupError, match="no entry at position 3"):
        find(entries, "3")
    with pytest.raises(LookupError, match="no entry at position 0"):
        find(entries, "0")
    with pytest.raises(ValueError, match="neither a position nor an id"):
        find(entries, "aaaa")


def test_an_ambiguous_id_prefix_names_nothing() -> None:
    entries = [stored(entry(id="abcdef01" + "1" * 24), 1), stored(entry(id="abcdef01" + "2" * 24))]
    with pytest.raises(LookupError, match="matches 2 entries"):
        find(entries, "abcdef01")
    with pytest.raises(LookupError, match="no entry with id"):
        find(entries, "abcdef02")


def test_filters_match_every_given_field_and_unreadable_only_without_filter() -> None:
    price = stored(entry(reason="max_attempts", source="q1", kind="price_batch"))
    poison = stored(entry(reason="poison", source="q2", kind="fetch"))
    garbage = StoredEntry.parse(3, b"garbage")

    assert Filters().match(garbage) and Filters().match(price)
    assert not Filters(reasons={"poison"}).match(garbage)
    assert Filters(reasons={"poison", "max_attempts"}).match(price)
    assert Filters(reasons={"poison"}, sources={"q2"}).match(poison)
    assert not Filters(reasons={"poison"}, sources={"q1"}).match(poison)
    assert not Filters(kinds={"price_batch"}).match(poison)


def test_replay_plan_resets_the_attempt_of_a_price_batch() -> None:
    plan = replay_plan(stored(entry()), "hydra:deadletter", KINDS)

    assert not isinstance(plan, str)
    _, payload = plan
    replayed = PriceBatch.model_validate_json(payload)
    assert replayed.attempt == 0
    assert (replayed.run_id, replayed.batch_id, replayed.ids) == ("r1", "b1", ["7", "8"])
    assert replayed.reason == "replayed from the dead-letter"


def test_replay_plan_passes_a_payload_of_an_unknown_kind_unchanged() -> None:
    plan = replay_plan(stored(entry(kind="other", payload="raw text")), "dl", KINDS)
    assert not isinstance(plan, str) and plan[1] == "raw text"


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"payload": '{"run_id": "r", "password": "hunter2"}'}, "credentials masked"),
        ({"payload": BATCH.model_dump_json(), "max_bytes": 20}, "payload_truncated"),
        ({"reason": "item_error"}, "item row"),
        ({"reason": "sink_rejected"}, "item row"),
        ({"source": ""}, "no queue"),
        ({"source": "hydra:deadletter"}, "no queue"),
        ({"payload": '{"run_id": "hunter2", "ids": []}'}, "not a valid price_batch message"),
    ],
)
def test_replay_plan_refuses_what_is_not_the_original_message(
    fields: dict[str, Any], why: str
) -> None:
    plan = replay_plan(stored(entry(**fields)), "hydra:deadletter", KINDS)
    assert isinstance(plan, str) and why in plan
    assert "hunter2" not in plan


def test_replay_plan_refuses_unreadable_entries_and_unloadable_kinds() -> None:
    assert "unreadable" in str(replay_plan(StoredEntry.parse(1, b"{"), "dl", KINDS))
    broken = {"price_batch": "crawlers.nowhere.Kind"}
    assert "cannot be loaded" in str(replay_plan(stored(entry()), "dl", broken))


def test_open_store_follows_the_mode_and_never_shows_the_password(tmp_path: Path) -> None:
    embedded = open_store(HydraConfig(deadletter_path="out/dl.jsonl"))
    assert isinstance(embedded, JsonLinesDeadLetterStore)
    assert embedded.path == project_path("out/dl.jsonl")

    shared = open_store(HydraConfig(redis_url="redis://:s3cret@127.0.0.1:1/0"))
    try:
        assert isinstance(shared, RedisDeadLetterStore)
        assert shared.describe() == "redis://:***@127.0.0.1:1/0 list hydra:deadletter"
    finally:
        shared.close()


def test_entries_round_trip_through_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    original = entry(details={"row_key": "r1/7"})
    append(path, line(original))
    (read,) = JsonLinesDeadLetterStore(path).read()
    assert read.entry == original
    assert json.loads(read.text)["details"] == {"row_key": "r1/7"}


def test_a_secret_cut_by_truncation_is_still_masked() -> None:
    """Redaction runs on the whole payload: a cut inside a secret would hide its key."""
    payload = json.dumps({"pad": "x" * 100, "password": "hunter2hunter2"})
    entry = DeadLetterEntry.build(
        reason="invalid_message", error="bad", source="test", payload=payload,
        max_bytes=len(payload) - 4,
    )  # fmt: skip
    assert "hunter2" not in entry.payload
    assert entry.payload_redacted
