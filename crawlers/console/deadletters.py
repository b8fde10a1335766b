"""Dead letters: the list (newest first, paged, by reason), one entry, replay and purge.

The console reads and acts on the same store as ``scrapy deadletter``
(:func:`crawlers.deadletters.open_store`: the Redis list of ``HYDRA_REDIS_URL``, or the
JSON-lines file of embedded mode) and with its rules: an entry is removed by its exact
bytes, a replay follows :func:`~crawlers.deadletters.replay_plan` and goes back only to
a Redis queue (the script that pushes and removes at once). Payloads and details are
shown redacted, as escaped text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any, get_args
from urllib.parse import quote, urlencode

import redis
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from crawlers.console.auth import Changer, Session, Viewer
from crawlers.deadletters import (
    DeadLetterStore,
    Filters,
    RedisDeadLetterStore,
    StoredEntry,
    open_store,
    replay_plan,
)
from crawlers.models.deadletter import DeadLetterReason

if TYPE_CHECKING:
    from crawlers.config import HydraConfig
    from crawlers.console.app import Console
    from crawlers.models.redaction import Redactor

PAGE = 50
#: entries a page reads at most, the newest (older ones: `scrapy deadletter list`)
MAX_READ = 5000
REASONS: tuple[str, ...] = get_args(DeadLetterReason)
#: how much of a payload the page shows (the rest is cut, and said so)
SHOWN_BYTES = 256 << 10
NOTICES = {
    "replayed": "Replayed: the message is back on its queue and out of the dead-letter.",
    "purged": "Purged: the entry is gone.",
    "gone": "That entry is no longer in the dead-letter (replayed or purged meanwhile).",
}


def token(stored: StoredEntry) -> str:
    """How the pages name an entry: its id, or for an unreadable one a digest of its bytes
    (positions move as entries come and go; the bytes do not)."""
    return stored.id or "raw-" + hashlib.sha256(stored.raw).hexdigest()[:24]


def router(console: Console) -> APIRouter:
    api = APIRouter()
    config = console.config

    async def entries() -> tuple[list[StoredEntry], str, bool]:
        """Every entry (oldest first), where they are, and whether replay is possible."""
        try:
            return await asyncio.to_thread(_read, config)
        except redis.exceptions.RedisError as exc:
            raise HTTPException(status_code=503, detail=_redis_error(config, exc)) from None

    async def entry_of(name: str) -> tuple[StoredEntry, str, bool]:
        found, where, replayable = await entries()
        for stored in found:
            if token(stored) == name:
                return stored, where, replayable
        raise HTTPException(status_code=404, detail="no such dead letter (replayed or purged?)")

    @api.get("/deadletters")
    async def list_page(
        request: Request,
        session: Viewer,
        reason: Annotated[str, Query(max_length=32)] = "",
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        done: str = "",
    ) -> HTMLResponse:
        reason = reason if reason in REASONS else ""
        found, where, replayable = await entries()
        wanted = Filters(reasons={reason} if reason else ())
        matching = [stored for stored in reversed(found) if wanted.match(stored)]
        shown = matching[(page - 1) * PAGE : page * PAGE]
        more = len(matching) > page * PAGE
        query = {"reason": reason} if reason else {}
        rows = [_row(stored, config.redactor) for stored in shown]
        return console.render(
            request, "deadletters.html", session, rows=rows, total=len(found),
            matching=len(matching), reason=reason, reasons=REASONS, page=page, where=where,
            older=urlencode({**query, "page": page + 1}) if more else "",
            newer=urlencode({**query, "page": page - 1}) if page > 1 else "",
            replayable=replayable, flash=NOTICES.get(done, ""),
        )  # fmt: skip

    @api.get("/deadletters/{name}")
    async def entry_page(request: Request, session: Viewer, name: str) -> HTMLResponse:
        stored, where, replayable = await entry_of(name[:80])
        return _page(console, request, session, stored, where, replayable)

    @api.post("/deadletters/{name}/replay")
    async def replay(request: Request, session: Changer, name: str) -> Response:
        stored, where, replayable = await entry_of(name[:80])
        if not replayable:
            why = "replay puts a message back on a shared Redis queue; this deployment has none"
            return _page(console, request, session, stored, where, False, refused=why)
        plan = replay_plan(stored, config.deadletter_key, config.registry("task_kinds"))
        if isinstance(plan, str):
            return _page(console, request, session, stored, where, True, refused=plan)
        entry, payload = plan
        try:
            result = await asyncio.to_thread(_requeue, config, stored, entry.source, payload)
        except redis.exceptions.RedisError as exc:
            raise HTTPException(status_code=503, detail=_redis_error(config, exc)) from None
        if result < 0:
            why = f"key {entry.source} is not a list; nothing changed"
            return _page(console, request, session, stored, where, True, refused=why)
        done = "replayed" if result == 1 else "gone"
        return console.back(f"{console.prefix}/deadletters?done={done}")

    @api.post("/deadletters/{name}/purge")
    async def purge(session: Changer, name: str) -> Response:
        stored, _, _ = await entry_of(name[:80])
        removed = await asyncio.to_thread(_remove, config, stored)
        return console.back(f"{console.prefix}/deadletters?done={'purged' if removed else 'gone'}")

    return api


def _page(
    console: Console, request: Request, session: Session, stored: StoredEntry, where: str,
    replayable: bool, *, refused: str = "",
) -> HTMLResponse:  # fmt: skip
    redactor = console.config.redactor
    entry = stored.entry
    details = (
        json.dumps(redactor.value(entry.details), indent=2, ensure_ascii=False) if entry else ""
    )
    return console.render(
        request, "deadletter.html", session, row=_row(stored, redactor), entry=entry, where=where,
        payload=_shown_payload(redactor, entry.payload if entry else stored.text),
        details=details, replayable=replayable, refused=refused, status=409 if refused else 200,
        error=redactor.text(entry.error) if entry else stored.problem,
    )  # fmt: skip


def _row(stored: StoredEntry, redactor: Redactor) -> dict[str, Any]:
    entry = stored.entry
    return {
        "token": token(stored), "quoted": quote(token(stored), safe=""),
        "id": stored.id, "position": stored.position, "problem": stored.problem,
        "reason": entry.reason if entry else "unreadable",
        "source": entry.source if entry else "", "kind": entry.kind if entry else "",
        "created_at": entry.created_at if entry else "",
        "error": redactor.text(entry.error) if entry else stored.problem,
    }  # fmt: skip


def _shown_payload(redactor: Redactor, payload: str) -> str:
    """The payload with secrets masked (whatever the worker masked already), JSON indented;
    masked whole before it is cut, so a cut never hides a secret from the redactor."""
    try:
        shown = json.dumps(redactor.value(json.loads(payload)), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        shown = redactor.text(payload)
    if len(shown) <= SHOWN_BYTES:
        return shown
    return shown[:SHOWN_BYTES] + "\n… (cut for the page)"


def _redis_error(config: HydraConfig, exc: Exception) -> str:
    return f"the dead-letter store is unreachable: {config.redactor.text(str(exc))}"


def _store(config: HydraConfig) -> DeadLetterStore:
    return open_store(config)


def _read(config: HydraConfig) -> tuple[list[StoredEntry], str, bool]:
    """The newest :data:`MAX_READ` entries (a dead-letter list can be huge: a page never
    reads it all), where they are, and whether replay is possible."""
    store = _store(config)
    try:
        if isinstance(store, RedisDeadLetterStore):
            return store.read_newest(MAX_READ), store.describe(), True
        return store.read()[-MAX_READ:], store.describe(), False
    finally:
        store.close()


def _requeue(config: HydraConfig, stored: StoredEntry, queue: str, payload: str) -> int:
    store = _store(config)
    try:
        assert isinstance(store, RedisDeadLetterStore)
        return store.requeue(stored, queue, payload, keep=False)
    finally:
        store.close()


def _remove(config: HydraConfig, stored: StoredEntry) -> bool:
    store = _store(config)
    try:
        return store.remove([stored])[0]
    finally:
        store.close()
