"""The console's dead letters through HTTP, against a real redis-server (the workers' list
and queues) and, in embedded mode, the JSON-lines file: list, inspect, replay, purge."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from crawlers.config import HydraConfig
from crawlers.models import DeadLetterEntry, PriceBatch
from tests.consolefixtures import console_client, console_config, console_sign_in
from tests.servers import RedisServer

pytestmark = pytest.mark.integration
OPERATOR, READER = "op-dl-key-1", "ro-dl-key-1"
DL = "hydra:deadletter"
PRICES = "hydra:prices:batches"
XSS = "<script>alert('x')</script>"
SECRET = "hunter2-9c1"


def _batch(batch_id: str) -> str:
    ids = [f"{batch_id}-1", f"{batch_id}-2"]
    return PriceBatch(run_id="r1", batch_id=batch_id, ids=ids, attempt=4).model_dump_json()


def _entry(batch_id: str = "b1", **fields: Any) -> DeadLetterEntry:
    values: dict[str, Any] = {
        "reason": "max_attempts", "error": f"http_429 for id {batch_id}-1", "source": PRICES,
        "payload": _batch(batch_id), "kind": "price_batch",
    }  # fmt: skip
    return DeadLetterEntry.build(**{**values, **fields})


def _config(tmp_path: Path, **extra: Any) -> HydraConfig:
    return console_config(
        tmp_path, OPERATOR, READER, HYDRA_DEADLETTER_KEY=DL,
        HYDRA_DEADLETTER_PATH=str(tmp_path / "deadletter.jsonl"), **extra,
    )  # fmt: skip


_client, _sign_in = console_client, console_sign_in


@pytest.fixture
def console(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[TestClient]:
    with _client(_config(tmp_path, HYDRA_REDIS_URL=redis_server.url)) as client:
        yield client


def _listed(page: str) -> list[str]:
    return re.findall(r'<tr data-entry="([^"]+)">', page)


def _ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["id"] for raw in client.lrange(DL, 0, -1)]


def test_the_list_is_newest_first_paged_and_filtered_by_reason(
    console: TestClient, redis_client: redis.Redis
) -> None:
    entries = [_entry(f"b{n}") for n in range(51)] + [_entry("p1", reason="poison")]
    redis_client.rpush(DL, *(e.model_dump_json() for e in entries))
    _sign_in(console, READER)
    first = console.get("/ui/deadletters").text
    assert _listed(first) == [e.id for e in reversed(entries)][:50]
    assert "52 of 52 in redis://" in first and 'id="older" href="?page=2"' in first
    second = console.get("/ui/deadletters?page=2").text
    assert _listed(second) == [entries[1].id, entries[0].id] and 'id="older"' not in second
    poison = console.get("/ui/deadletters?reason=poison").text
    assert _listed(poison) == [entries[-1].id] and "1 of 52" in poison
    assert _listed(console.get("/ui/deadletters?reason=nonsense").text)[0] == entries[-1].id


def test_an_entry_is_shown_as_escaped_text_without_its_secrets(
    console: TestClient, redis_client: redis.Redis
) -> None:
    payload = json.dumps({
        "batch_id": XSS, "password": SECRET, "callback": f"https://u:{SECRET}@h.example/x",
        "nested": {"api_key": SECRET, "note": f"see https://h.example/?token={SECRET}"},
    })  # fmt: skip
    # stored as it came (a producer of its own, or an older worker, did not mask it)
    raw = DeadLetterEntry(
        reason="invalid_message", error=f"bad {XSS} at https://h.example/?sig={SECRET}",
        source=PRICES, payload=payload, details={"token": SECRET, "row": XSS},
    )  # fmt: skip
    redis_client.rpush(DL, raw.model_dump_json(), f"{XSS} not json {SECRET}")
    _sign_in(console, OPERATOR)
    listing = console.get("/ui/deadletters").text
    unreadable, readable = _listed(listing)
    assert readable == raw.id and unreadable.startswith("raw-")
    for page in (listing, console.get(f"/ui/deadletters/{raw.id}").text):
        assert XSS not in page and SECRET not in page
    page = console.get(f"/ui/deadletters/{raw.id}").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert '"password": "***"' in page.replace("&#34;", '"')
    assert 'id="reason">invalid_message<' in page and 'id="replay" disabled' not in page
    odd = console.get(f"/ui/deadletters/{unreadable}").text
    assert "&lt;script&gt;" in odd and XSS not in odd and 'id="replay" disabled' in odd
    assert console.get("/ui/deadletters/ffffffffffffffff").status_code == 404


def test_replay_puts_the_message_back_on_its_queue_and_removes_the_entry(
    console: TestClient, redis_client: redis.Redis
) -> None:
    kept, replayed = _entry("b1"), _entry("b2")
    row = _entry("r1", reason="item_error", payload='{"id": 7}')
    redis_client.rpush(DL, *(e.model_dump_json() for e in (kept, replayed, row)))
    token = _sign_in(console, OPERATOR)
    answer = console.post(
        f"/ui/deadletters/{replayed.id}/replay", data={"csrf_token": token}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=replayed")
    assert _ids(redis_client) == [kept.id, row.id]
    queued = [PriceBatch.model_validate_json(m) for m in redis_client.lrange(PRICES, 0, -1)]
    assert [batch.batch_id for batch in queued] == ["b2"]
    assert "back on its queue" in console.get(answer.headers["location"]).text
    # an item row is no queue message: refused, kept, nothing pushed
    refused = console.post(f"/ui/deadletters/{row.id}/replay", data={"csrf_token": token})
    assert refused.status_code == 409 and "holds an item row" in refused.text
    assert _ids(redis_client) == [kept.id, row.id] and redis_client.llen(PRICES) == 1
    gone = console.post(f"/ui/deadletters/{replayed.id}/replay", data={"csrf_token": token})
    assert gone.status_code == 404 and redis_client.llen(PRICES) == 1


def test_purge_removes_only_that_entry(console: TestClient, redis_client: redis.Redis) -> None:
    first, second = _entry("b1"), _entry("b2")
    redis_client.rpush(DL, first.model_dump_json(), second.model_dump_json())
    token = _sign_in(console, OPERATOR)
    answer = console.post(
        f"/ui/deadletters/{first.id}/purge", data={"csrf_token": token}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=purged")
    assert _ids(redis_client) == [second.id] and redis_client.llen(PRICES) == 0


def test_a_reader_or_a_missing_csrf_token_changes_nothing(
    console: TestClient, redis_client: redis.Redis
) -> None:
    entry = _entry("b1")
    redis_client.rpush(DL, entry.model_dump_json())
    reader_token = _sign_in(console, READER)
    page = console.get(f"/ui/deadletters/{entry.id}").text
    assert 'id="replay" disabled' in page and 'id="purge" class="danger" disabled' in page
    for action in ("replay", "purge"):
        refused = console.post(
            f"/ui/deadletters/{entry.id}/{action}", data={"csrf_token": reader_token}
        )
        assert refused.status_code == 403 and "read-only" in refused.text
    _sign_in(console, OPERATOR)
    for action in ("replay", "purge"):
        assert console.post(f"/ui/deadletters/{entry.id}/{action}").status_code == 403
    assert _ids(redis_client) == [entry.id] and redis_client.llen(PRICES) == 0


def test_embedded_mode_reads_the_file_purges_and_does_not_replay(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first, second = _entry("b1"), _entry("b2")
    path = tmp_path / "deadletter.jsonl"
    path.write_text(first.model_dump_json() + "\n" + second.model_dump_json() + "\n")
    with _client(config) as client:
        token = _sign_in(client, OPERATOR)
        listing = client.get("/ui/deadletters").text
        assert _listed(listing) == [second.id, first.id] and 'id="no-replay"' in listing
        assert 'id="replay" disabled' in client.get(f"/ui/deadletters/{first.id}").text
        refused = client.post(f"/ui/deadletters/{first.id}/replay", data={"csrf_token": token})
        assert refused.status_code == 409 and "Redis queue" in refused.text
        answer = client.post(
            f"/ui/deadletters/{first.id}/purge", data={"csrf_token": token}, follow_redirects=False
        )
        assert answer.status_code == 303
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [second.id]


def test_a_huge_dead_letter_list_is_read_from_its_newest_end_only(
    console: TestClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crawlers.console import deadletters

    monkeypatch.setattr(deadletters, "MAX_READ", 10)
    entries = [_entry(f"h{n}") for n in range(25)]
    redis_client.rpush(DL, *(e.model_dump_json() for e in entries))
    _sign_in(console, READER)
    listed = _listed(console.get("/ui/deadletters").text)
    assert listed == [e.id for e in reversed(entries)][:10]  # the newest ten, never the rest
    newest = console.get(f"/ui/deadletters/{entries[-1].id}")
    assert newest.status_code == 200 and entries[-1].id in newest.text
