"""Hostile queue messages: whatever is pushed, a worker dead-letters it and goes on.

Messages are untrusted input. A worker must never crash on one, never fetch a
URL outside ``HYDRA_ALLOWED_SCHEMES``/``HYDRA_ALLOWED_HOSTS``, never read a
local file, never leak a credential, and never lose or duplicate the valid
messages around a bad one. Faults that happened before and must stay fixed:

- ``"[" * 100000`` raised a RecursionError out of ``start()``: the worker took
  nothing more;
- ``url_template: "notaurl/{id}"`` did the same ("Missing scheme in request url");
- ``file:///srv/data/{id}`` with id ``../secret.json`` read a local file into the
  sink; ``s3://``, ``ftp://`` and ``data:`` URLs were reachable too.
"""

from __future__ import annotations

import functools
import json
import tempfile
import unicodedata
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scrapy import Request
from scrapy.utils.test import get_crawler

import crawlers.settings
from crawlers.models import PriceBatch
from crawlers.queues import Delivery
from crawlers.sandbox import SandboxServer
from crawlers.spiders.prices import PricesSpider
from crawlers.tasks.base import InvalidMessage, TaskRun
from crawlers.tasks.price_batches import PriceBatchKind
from tests.conftest import read_jsonl, read_summary, run_worker
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

QUEUE = "hydra:prices:batches"
DEADLETTER = "hydra:deadletter"
#: small, so that "huge" payloads stay cheap to generate
MAX_BYTES = 4096
SENSIBLE = {"invalid_message", "forbidden_url"}


def _tail(log: str, chars: int = 4000) -> str:
    return "\n--- worker log (tail) ---\n" + log[-chars:]


def _batch(batch_id: str, ids: list[Any], **fields: Any) -> dict[str, Any]:
    return {"run_id": "adversarial", "batch_id": batch_id, "ids": ids, **fields}


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _queue_leftovers(client: redis.Redis) -> dict[str, int]:
    """Everything still queued, delayed, leased or held: all must be zero after a run."""
    helper = "{" + QUEUE + "}"
    return {
        QUEUE: int(client.llen(QUEUE)),
        f"{helper}:ready": int(client.llen(f"{helper}:ready")),
        f"{helper}:delayed": int(client.zcard(f"{helper}:delayed")),
        f"{helper}:leases": int(client.zcard(f"{helper}:leases")),
        f"{helper}:held": int(client.hlen(f"{helper}:held")),
        f"{helper}:deadletter-outbox": int(client.llen(f"{helper}:deadletter-outbox")),
    }


def _deadletters(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in client.lrange(DEADLETTER, 0, -1)]


# -- the scenario of one example ----------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A message that must be dead-lettered exactly once."""

    raw: bytes
    #: unique batch_id it carries, if it is a JSON object (to find its entry)
    tag: str | None = None
    #: the one acceptable reason, when it is known; else any of SENSIBLE
    reason: str | None = None
    what: str = ""

    def expected_payload(self) -> str:
        """The payload as a dead-letter entry holds it (before any credential masking):
        non-UTF-8 bytes backslash-escaped, cut at ``HYDRA_MAX_MESSAGE_BYTES``."""
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            text = self.raw.decode("utf-8", "backslashreplace")
        return text[:MAX_BYTES]


@dataclass
class Scenario:
    valid: list[dict[str, Any]]
    bad: list[Bad]
    #: the payloads in push order
    pushed: list[bytes] = field(default_factory=list)

    @property
    def valid_ids(self) -> list[str]:
        return [item for message in self.valid for item in message["ids"]]


def known_faults(port: int) -> list[Bad]:
    """Messages that broke workers before, or that probe the URL policy's edges."""
    sandbox = f"127.0.0.1:{port}"

    def template(tag: str, url: str, reason: str, ids: list[str] | None = None) -> Bad:
        message = _batch(tag, ids or [f"{tag}-id"], url_template=url)
        return Bad(_json(message), tag, reason, f"url_template {url!r}")

    return [
        Bad(b"[" * 100_000, None, "invalid_message", "100000 nested lists (too large)"),
        Bad(b"[" * 3000, None, "invalid_message", "3000 nested lists"),
        Bad(b'{"a":' * 600 + b"1" + b"}" * 600, None, "invalid_message", "600 nested objects"),
        Bad(
            b'{"run_id": "r", "batch_id": "fixed-deep-ids", "ids": '
            + b"[" * 1500
            + b"]" * 1500
            + b"}",
            "fixed-deep-ids",
            "invalid_message",
            "ids nested 1500 deep",
        ),
        template("fixed-noscheme", "notaurl/{id}", "invalid_message"),
        template("fixed-relative", f"//{sandbox}/price/{{id}}", "invalid_message"),
        template("fixed-file", "file:///srv/data/{id}", "forbidden_url", ["../secret.json"]),
        template("fixed-file-host", "file://localhost/etc/{id}", "forbidden_url", ["passwd"]),
        template("fixed-s3", "s3://bucket/prices/{id}", "forbidden_url"),
        template("fixed-ftp", f"ftp://{sandbox}/price/{{id}}", "forbidden_url"),
        template("fixed-data", "data:text/plain,{id}", "forbidden_url"),
        template("fixed-other-host", "http://evil.example/price/{id}", "forbidden_url"),
        template("fixed-trailing-dot", f"http://127.0.0.1.:{port}/price/{{id}}", "forbidden_url"),
        template("fixed-localhost", f"http://localhost:{port}/price/{{id}}", "forbidden_url"),
        template("fixed-hex-ip", f"http://0x7f000001:{port}/price/{{id}}", "forbidden_url"),
        template("fixed-v6", f"http://[::ffff:127.0.0.1]:{port}/price/{{id}}", "forbidden_url"),
        template("fixed-id-host", "http://{id}.127.0.0.1/price", "invalid_message"),
        template("fixed-id-userinfo", f"http://{{id}}@{sandbox}/price/x", "invalid_message"),
        # urlsplit sees 127.0.0.1, Scrapy (WHATWG) sees evil.example: must not be fetched
        template(
            "fixed-backslash", f"http://evil.example\\@{sandbox}/price/{{id}}", "forbidden_url"
        ),
        Bad(b"\xff\xfe\x00not utf-8", None, "invalid_message", "not UTF-8"),
        Bad(b"", None, "invalid_message", "empty"),
        Bad(b"null", None, "invalid_message", "null"),
        Bad(b"{}", None, "invalid_message", "empty object"),
        Bad(b"x" * (MAX_BYTES + 1), None, "invalid_message", "one byte too large"),
        Bad(_json(_batch("fixed-dotdot", [".."])), "fixed-dotdot", "invalid_message", "id .."),
        Bad(_json(_batch("fixed-dot", ["ok", "."])), "fixed-dot", "invalid_message", "id ."),
        Bad(_json(_batch("fixed-nul", ["a\x00b"])), "fixed-nul", "invalid_message", "id NUL"),
        Bad(_json(_batch("fixed-nl", ["a\nb"])), "fixed-nl", "invalid_message", "id newline"),
        Bad(_json(_batch("fixed-esc", ["\x1b[31m"])), "fixed-esc", "invalid_message", "id ESC"),
    ]


#: valid IDs that look dangerous: each must reach the API as one quoted path segment
TRICKY_IDS = ["%2e%2e", "...", " padded ", "?q=1&r=2", "#frag", "a@b:c", "{id}", "\\", "é€😀"]

_ID_ALPHABET = [*"abcXYZ019-_.~ %?#&+;=@:!$'()*,[]{}\"\\<>^`|", "é", "€", "😀", "\u200b"]
valid_id = (
    st.text(alphabet=st.sampled_from(_ID_ALPHABET), min_size=1, max_size=10)
    .filter(lambda s: s.strip() != "" and s not in (".", ".."))
    .filter(lambda s: s not in TRICKY_IDS)
)


def _wrong_type_fields() -> st.SearchStrategy[dict[str, Any]]:
    """A field of a batch replaced by a value of a definitely wrong type or range."""
    finite = st.floats(allow_nan=False, allow_infinity=False)
    not_a_string = st.one_of(st.integers(), finite, st.none(), st.lists(st.integers(), max_size=2))
    return st.one_of(
        st.fixed_dictionaries({"run_id": st.one_of(not_a_string, st.just(""))}),
        st.fixed_dictionaries({"batch_id": not_a_string}),
        st.fixed_dictionaries(
            {
                "ids": st.one_of(
                    st.just([]),
                    st.text(max_size=5),
                    st.integers(),
                    st.none(),
                    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                )
            }
        ),
        st.fixed_dictionaries(
            {"url_template": st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2))}
        ),
        st.fixed_dictionaries(
            {
                "attempt": st.one_of(
                    st.integers(max_value=-1),
                    finite.filter(lambda number: not number.is_integer()),
                    st.text(alphabet="abcxyz", min_size=1, max_size=4),
                    st.none(),
                    st.lists(st.integers(), max_size=2),
                )
            }
        ),
        st.fixed_dictionaries(
            {"region": st.one_of(st.integers(), st.lists(st.text(), max_size=1))}
        ),
        st.fixed_dictionaries({"unexpected": st.text(max_size=5)}),
    )


def _bad_ids() -> st.SearchStrategy[list[Any]]:
    control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.just("\x7f")
    bad_one = st.one_of(
        st.sampled_from(["", " ", "\t", ".", ".."]),
        st.tuples(st.text(max_size=3), control, st.text(max_size=3)).map("".join),
        st.just("i" * 1025),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=2), max_size=2),
    )
    return st.tuples(st.lists(valid_id, max_size=2), bad_one).map(lambda t: [*t[0], t[1]])


def _bad_templates(port: int) -> st.SearchStrategy[tuple[str, str | None]]:
    """``(url_template, reason)`` that must never be fetched (reason None: either)."""
    scheme = st.from_regex(r"[a-zA-Z][a-zA-Z0-9+.-]{0,8}", fullmatch=True).filter(
        lambda s: s.lower() not in ("http", "https")
    )
    other_schemes = st.tuples(
        scheme,
        st.sampled_from(
            [f"://127.0.0.1:{port}/price/{{id}}", ":///srv/data/{id}", ":{id}", "://h/{id}"]
        ),
    ).map(lambda t: (t[0] + t[1], None))
    label = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
    host = st.one_of(
        st.lists(label, min_size=1, max_size=3).map(".".join),
        st.sampled_from(["10.0.0.1", "169.254.169.254", "127.0.0.2", "0.0.0.0", "[::1]"]),
    ).filter(lambda h: h != "127.0.0.1")
    other_hosts = st.tuples(st.sampled_from(["http", "https", "HTTP"]), host).map(
        lambda t: (f"{t[0]}://{t[1]}:{port}/price/{{id}}", "forbidden_url")
    )
    no_scheme = st.sampled_from(
        [
            ("notaurl/{id}", "invalid_message"),
            (f"127.0.0.1:{port}/price/{{id}}", None),
            ("/price/{id}", "invalid_message"),
            ("{id}", "invalid_message"),
        ]
    )
    id_in_host = st.sampled_from(
        [
            "http://{id}/price",
            "http://{id}.127.0.0.1/price",
            f"http://127.0.0.1.{{id}}:{port}/price",
            "http://127.0.0.1:{id}/price",
            f"http://u:{{id}}@127.0.0.1:{port}/price",
        ]
    ).map(lambda url: (url, "invalid_message"))
    no_placeholder = st.just((f"http://127.0.0.1:{port}/price/x", "invalid_message"))
    return st.one_of(other_schemes, other_hosts, no_scheme, id_in_host, no_placeholder)


@st.composite
def scenarios(draw: st.DrawFn, port: int) -> Scenario:
    ids = draw(st.lists(valid_id, min_size=4, max_size=14, unique=True))
    sandbox_template = f"http://127.0.0.1:{port}/price/{{id}}"
    valid_templates = st.sampled_from(
        [
            None,  # HYDRA_PRICE_URL_TEMPLATE
            sandbox_template,
            f"HTTP://127.0.0.1:{port}/price/{{id}}",
            f"http://127.0.0.1:{port}/price/{{id}}?src=hydra",
            f"http://127.0.0.1:{port}/price/{{id}}#fragment",
        ]
    )
    valid: list[dict[str, Any]] = []
    chunks = [TRICKY_IDS, *(ids[n : n + 3] for n in range(0, len(ids), 3))]
    for number, chunk in enumerate(chunks):
        template = draw(valid_templates)
        extra = {"url_template": template} if template else {}
        valid.append(_batch(f"ok-{number}", list(chunk), **extra))

    bad: list[Bad] = list(known_faults(port))
    counter = iter(range(10_000))

    def tagged(message_fields: dict[str, Any], what: str, reason: str | None) -> Bad:
        tag = f"bad-{next(counter)}"
        message = {**_batch(tag, [f"{tag}-id"]), **message_fields}
        # a replaced batch_id cannot identify the entry: its exact payload does
        return Bad(_json(message), None if "batch_id" in message_fields else tag, reason, what)

    kinds = st.sampled_from(["text", "bytes", "wrong_type", "bad_ids", "template", "huge", "deep"])
    for kind in draw(st.lists(kinds, min_size=3, max_size=12)):
        if kind == "text":
            text = draw(st.text(max_size=200))
            # lone surrogates cannot be UTF-8: they arrive as undecodable bytes
            bad.append(Bad(text.encode("utf-8", "surrogatepass"), None, None, "text"))
        elif kind == "bytes":
            bad.append(Bad(draw(st.binary(max_size=200)), None, None, "bytes"))
        elif kind == "wrong_type":
            changed = draw(_wrong_type_fields())
            bad.append(tagged(changed, f"wrong type {changed!r}", "invalid_message"))
        elif kind == "bad_ids":
            bad_ids = draw(_bad_ids())
            bad.append(tagged({"ids": bad_ids}, f"bad ids {bad_ids!r}", "invalid_message"))
        elif kind == "template":
            url, reason = draw(_bad_templates(port))
            bad.append(tagged({"url_template": url}, f"url_template {url!r}", reason))
        elif kind == "huge":
            size = draw(st.integers(MAX_BYTES + 1, 4 * MAX_BYTES))
            huge_ids = [f"h{n:05d}" for n in range(size // 9)]
            bad.append(tagged({"ids": huge_ids}, f"huge ({size} bytes)", "invalid_message"))
        else:
            depth = draw(st.integers(200, 1800))
            opener = draw(st.sampled_from([b"[", b'{"k":', b'[{"a":']))
            bad.append(Bad(opener * depth, None, "invalid_message", f"nested {depth} deep"))

    # valid messages first and last, everything else shuffled between them
    middle: list[bytes] = [b.raw for b in bad] + [_json(m) for m in valid[1:-1]]
    middle = draw(st.permutations(middle))
    pushed = [_json(valid[0]), *middle, _json(valid[-1])]
    return Scenario(valid, bad, pushed)


def _match_deadletters(
    bad: list[Bad], entries: list[dict[str, Any]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Pair every bad message with one entry; return the problems found."""
    problems: list[str] = []
    unused = list(entries)
    unmatched: list[Bad] = []

    def batch_id(entry: dict[str, Any]) -> object:
        try:
            value = json.loads(entry["payload"])
        except (ValueError, RecursionError):
            return None
        return value.get("batch_id") if isinstance(value, dict) else None

    for message in bad:
        expected = message.expected_payload()
        found = next((e for e in unused if e["payload"] == expected), None)
        if found is None and message.tag is not None:
            found = next((e for e in unused if batch_id(e) == message.tag), None)
        if found is None:
            unmatched.append(message)
            continue
        unused.remove(found)
        wanted = {message.reason} if message.reason else SENSIBLE
        if found["reason"] not in wanted:
            problems.append(
                f"{message.what}: dead-lettered as {found['reason']} ({found['error']!r}), "
                f"expected {sorted(wanted)}"
            )
    # the rest can only be told apart by content that credential masking may have changed
    redacted = [e for e in unused if e.get("payload_redacted")]
    for message in unmatched:
        if not redacted:
            problems.append(f"{message.what}: no dead-letter entry for {message.raw[:120]!r}")
            continue
        entry = redacted.pop(0)
        unused.remove(entry)
        if entry["reason"] not in SENSIBLE:
            problems.append(f"{message.what}: dead-lettered as {entry['reason']}")
    for entry in unused:
        problems.append(
            f"unexpected dead-letter entry: {entry['reason']} {entry['payload'][:200]!r}"
        )
    return problems, unused


@pytest.fixture
def raw_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client for bytes: non-UTF-8 payloads must not wedge the queue."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=False)
    yield client
    client.close()


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
def test_hostile_messages_are_dead_lettered_and_valid_ones_stored_once(
    data: st.DataObject,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    raw_client: redis.Redis,
    sandbox: SandboxServer,
) -> None:
    redis_client.flushall()
    sandbox.reset_stats()
    scenario = data.draw(scenarios(sandbox.port), label="scenario")
    raw_client.rpush(QUEUE, *scenario.pushed)
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))

    log = run_worker(
        timeout=90,
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=1,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        HYDRA_SINKS=f"jsonl://{workdir}/out.jsonl",
        HYDRA_SUMMARY_PATH=str(workdir / "summary.json"),
        HYDRA_ALLOWED_HOSTS="127.0.0.1",
        HYDRA_MAX_MESSAGE_BYTES=MAX_BYTES,
    )

    # every valid ID stored exactly once, and asked from the API exactly once
    stored = Counter(row["id"] for row in read_jsonl(workdir / "out.jsonl"))
    expected = Counter(scenario.valid_ids)
    assert stored == expected, (
        f"stored {stored - expected} extra, {expected - stored} missing" + _tail(log)
    )
    per_id = sandbox.stats()["per_id"]
    assert per_id == dict.fromkeys(scenario.valid_ids, 1), (
        f"the API saw more than the valid IDs: {per_id}" + _tail(log)
    )
    # every bad message dead-lettered exactly once, for a sensible reason
    entries = _deadletters(redis_client)
    problems, _ = _match_deadletters(scenario.bad, entries)
    assert not problems, "\n".join(problems) + _tail(log)
    assert len(entries) == len(scenario.bad)
    assert all(entry["error"] for entry in entries)
    # nothing left in the queue or leased
    assert set(_queue_leftovers(redis_client).values()) == {0}, _queue_leftovers(redis_client)
    stats = read_summary(workdir / "summary.json")["stats"]
    assert stats["hydra/queue/acked"] == len(scenario.pushed)
    assert "Traceback" not in log, _tail(log)


# -- local files and other schemes ---------------------------------------------------


def test_local_files_and_other_schemes_are_never_fetched(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    secret = f"TOP-SECRET-{uuid.uuid4().hex}"
    (tmp_path / "secret.json").write_text(json.dumps({"price": secret}), encoding="utf-8")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1").write_text(json.dumps({"price": secret}), encoding="utf-8")
    forbidden = {
        "file": (f"file://{tmp_path}/data/{{id}}", ["../secret.json", "1"]),
        "file-direct": (f"file://{tmp_path}/{{id}}", ["secret.json"]),
        "file-localhost": (f"file://localhost{tmp_path}/{{id}}", ["secret.json"]),
        "data": ("data:application/json,{id}", [json.dumps({"price": secret})]),
        "ftp": (f"ftp://127.0.0.1:{sandbox.port}/price/{{id}}", ["f1"]),
        "s3": ("s3://hydra-bucket/{id}", ["s1"]),
    }
    messages = [
        json.dumps(_batch(name, ids, url_template=template))
        for name, (template, ids) in forbidden.items()
    ]
    # the other faults of the past, at the default HYDRA_MAX_MESSAGE_BYTES
    nested = "[" * 100_000
    no_scheme = json.dumps(_batch("no-scheme", ["n1"], url_template="notaurl/{id}"))
    valid = _batch("valid-after", ["v1", "v2"])
    redis_client.rpush(QUEUE, *messages, nested, no_scheme, json.dumps(valid))

    log = run_worker(
        HYDRA_REDIS_URL=redis_server.url,
        HYDRA_IDLE_CLOSE_SECONDS=1,
        HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
        HYDRA_SINKS=f"jsonl://{tmp_path}/out.jsonl",
        HYDRA_SUMMARY_PATH=str(tmp_path / "summary.json"),
    )

    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["id"] for row in rows] == ["v1", "v2"], _tail(log)
    assert sandbox.stats()["per_id"] == {"v1": 1, "v2": 1}
    entries = _deadletters(redis_client)
    by_batch = {
        json.loads(e["payload"]).get("batch_id"): e for e in entries if e["payload"][0] == "{"
    }
    for name in forbidden:
        assert by_batch[name]["reason"] == "forbidden_url", by_batch[name]
    assert by_batch["no-scheme"]["reason"] == "invalid_message"
    (deep,) = [e for e in entries if e["payload"].startswith("[[[")]
    assert deep["reason"] == "invalid_message"
    assert len(entries) == len(forbidden) + 2
    # the secret file was never read: its content is nowhere
    sink_text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    summary_text = (tmp_path / "summary.json").read_text(encoding="utf-8")
    for where, text in {"sink": sink_text, "log": log, "summary": summary_text}.items():
        assert secret not in text.replace(json.dumps({"price": secret}), ""), where
    assert "Traceback" not in log, _tail(log)
    assert set(_queue_leftovers(redis_client).values()) == {0}


# -- credentials in a url_template ------------------------------------------------------

PASSWORD = "s3cretpw"


@dataclass(frozen=True)
class CredentialRun:
    log: str
    summary: str
    sink: str
    deadletter: list[str]
    per_id: dict[str, int]
    stored: list[str]


@pytest.fixture(scope="module")
def credential_run(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> CredentialRun:
    """One worker run over batches whose url_template carries ``user:s3cretpw@``; the
    batch's second ID always fails, so with one attempt the batch is dead-lettered."""
    workdir = tmp_path_factory.mktemp("credentials")
    client = redis_server.client()
    try:
        client.flushall()
        with SandboxServer(fail_ids=frozenset({"cred-fail"})) as sandbox:
            template = f"http://user:{PASSWORD}@127.0.0.1:{sandbox.port}/price/{{id}}"
            client.rpush(
                QUEUE,
                json.dumps(_batch("cred", ["cred-ok", "cred-fail"], url_template=template)),
                # invalid (unknown field) and forbidden (scheme): dead-lettered at once
                json.dumps(_batch("cred-bad", ["x"], url_template=template, extra=1)),
                json.dumps(_batch("cred-ftp", ["y"], url_template="ftp" + template[4:])),
                json.dumps(_batch("plain", ["plain-1"])),
            )
            log = run_worker(
                "-s",
                "LOG_LEVEL=DEBUG",
                HYDRA_REDIS_URL=redis_server.url,
                HYDRA_IDLE_CLOSE_SECONDS=1,
                HYDRA_BATCH_MAX_ATTEMPTS=1,
                HYDRA_PRICE_URL_TEMPLATE=sandbox.url_template,
                HYDRA_SINKS=f"jsonl://{workdir}/out.jsonl",
                HYDRA_SUMMARY_PATH=str(workdir / "summary.json"),
            )
            per_id = sandbox.stats()["per_id"]
        deadletter = list(client.lrange(DEADLETTER, 0, -1))
    finally:
        client.close()
    sink = (workdir / "out.jsonl").read_text(encoding="utf-8")
    return CredentialRun(
        log=log,
        summary=(workdir / "summary.json").read_text(encoding="utf-8"),
        sink=sink,
        deadletter=deadletter,
        per_id=per_id,
        stored=[row["id"] for row in read_jsonl(workdir / "out.jsonl")],
    )


def test_url_credentials_stay_out_of_the_log_summary_and_sink(
    credential_run: CredentialRun,
) -> None:
    # the run did get to the batches: it stored one and dead-lettered three
    stats = json.loads(credential_run.summary)["stats"]
    assert stats["hydra/queue/claimed"] == 4, _tail(credential_run.log)
    for where in ("log", "summary", "sink"):
        text: str = getattr(credential_run, where)
        assert PASSWORD not in text, f"{where}: ...{_around(text, PASSWORD)}..."
    assert "plain-1" in credential_run.stored


def test_url_credentials_stay_out_of_dead_letters(credential_run: CredentialRun) -> None:
    reasons = sorted(json.loads(entry)["reason"] for entry in credential_run.deadletter)
    assert reasons == ["forbidden_url", "invalid_message", "max_attempts"]
    for entry in credential_run.deadletter:
        assert "user:***@127.0.0.1" in json.loads(entry)["payload"]
        assert PASSWORD not in entry, f"...{_around(entry, PASSWORD)}..."


def test_url_template_with_credentials_is_fetched(credential_run: CredentialRun) -> None:
    assert "cred-ok" in credential_run.stored
    assert credential_run.per_id.get("cred-fail") == 1


def _around(text: str, needle: str, width: int = 120) -> str:
    at = text.find(needle)
    return text[max(0, at - width) : at + width] if at >= 0 else ""


# -- in-process properties of the URL rules ---------------------------------------------

TEMPLATE = "http://127.0.0.1:8765/price/{id}"


@functools.cache
def _price_kind() -> PriceBatchKind:
    project = {name: getattr(crawlers.settings, name) for name in dir(crawlers.settings)}
    project = {name: value for name, value in project.items() if name.isupper()}
    crawler = get_crawler(PricesSpider, {**project, "HYDRA_ALLOWED_HOSTS": "127.0.0.1"})
    return PriceBatchKind(crawler)


def _request(batch: PriceBatch) -> Request:
    kind = _price_kind()
    run = TaskRun(Delivery("lease", batch.model_dump_json(), QUEUE), kind, message=batch)
    return kind.request(run, 0, lambda response: None)


@settings(max_examples=300, deadline=None)
@given(item=st.text(min_size=1, max_size=40))
@example(item="../secret.json")
@example(item="%2e%2e")
@example(item="a/../../b")
@example(item="@evil.example")
@example(item="?x=1#y")
@example(item="\\..\\x")
@example(item="é€😀\u202e")
def test_an_id_stays_one_path_segment_of_its_template(item: str) -> None:
    try:
        batch = PriceBatch(run_id="r", batch_id="b", ids=[item], url_template=TEMPLATE)
    except ValidationError:
        control = any(unicodedata.category(char) == "Cc" for char in item)
        assert item.strip() == "" or item in (".", "..") or control
        return
    url = _request(batch).url
    prefix = TEMPLATE.removesuffix("{id}")
    assert url.startswith(prefix)
    segment = url.removeprefix(prefix)
    assert "/" not in segment and "?" not in segment and "#" not in segment
    assert unquote(segment) == item
    assert urlsplit(url).hostname == "127.0.0.1"
    assert _price_kind().policy.violation(url) is None


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:99999/price/{id}",
        "http://127.0.0.1:port/price/{id}",
        "http://127.0.0.1:-1/price/{id}",
    ],
)
def test_an_admitted_template_always_makes_a_request(template: str) -> None:
    payload = json.dumps(_batch("b", ["1"], url_template=template))
    try:
        batch = _price_kind().parse(payload)
    except (InvalidMessage, ValidationError):
        return  # dead-lettered at once, as it should be
    _request(batch)  # admitted: building its request must not fail


@pytest.mark.parametrize("control", ["\x85", "\x9b", "\x80"])
def test_ids_with_c1_control_characters_are_invalid(control: str) -> None:
    with pytest.raises(ValidationError):
        PriceBatch(run_id="r", batch_id="b", ids=[f"a{control}31m"])
