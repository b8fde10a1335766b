"""``scrapy deadletter list|show|replay|purge``: look at and act on dead-lettered messages.

Entries are read from where this deployment's workers put them and removed by
their exact bytes, so workers may keep writing meanwhile (``crawlers.deadletters``).
Replay and purge act only on an explicit selection, so nothing is replayed by
accident, and a payload that is not the original message is refused. Reference:
``docs/commands.md``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, get_args

import redis
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from crawlers.config import HydraConfig, HydraConfigError
from crawlers.deadletters import (
    SHORT_ID,
    DeadLetterStore,
    Filters,
    RedisDeadLetterStore,
    StoredEntry,
    find,
    open_store,
    replay_plan,
)
from crawlers.models.deadletter import DeadLetterReason
from crawlers.models.redaction import DEFAULT_REDACTOR

if TYPE_CHECKING:
    import argparse

ACTIONS = ("list", "show", "replay", "purge")
ERROR_WIDTH = 80
_SELECTING = {"list", "replay", "purge"}
#: option dest -> (flag, actions that take it)
OPTIONS = {
    "reasons": ("--reason", _SELECTING),
    "sources": ("--source", _SELECTING),
    "kinds": ("--kind", _SELECTING),
    "limit": ("--limit", {"list"}),
    "as_json": ("--json", {"list"}),
    "select_all": ("--all", {"replay", "purge"}),
    "keep": ("--keep", {"replay"}),
    "dry_run": ("--dry-run", {"replay"}),
    "yes": ("--yes", {"purge"}),
}


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    store: DeadLetterStore
    config: HydraConfig

    def syntax(self) -> str:
        return "list|show|replay|purge [ID_OR_POSITION ...] [options]"

    def short_desc(self) -> str:
        return "List, show, replay or purge dead-letter entries"

    def long_desc(self) -> str:
        return (
            "Acts on the dead-letter of these settings. Entries are named by position (as in "
            "`list`) or by id (8 or more leading characters). Exit status: 0 done, 1 refused "
            "or not found, 2 usage or configuration error. See docs/commands.md."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        group = parser.add_argument_group(title="Dead-letter options")
        reasons = list(get_args(DeadLetterReason))
        add = group.add_argument
        many: dict[str, Any] = {"action": "append", "default": []}
        add("--reason", dest="reasons", choices=reasons, metavar="REASON", **many,
            help="only this reason (repeatable): " + ", ".join(reasons))  # fmt: skip
        add("--source", dest="sources", metavar="QUEUE", **many, help="only from this queue key")
        add("--kind", dest="kinds", metavar="KIND", **many, help="only this task kind")
        add("--limit", type=int, default=0, metavar="N", help="list: only the first N")
        add("--json", dest="as_json", action="store_true", help="list: one JSON object a line")
        add("--all", dest="select_all", action="store_true", help="replay/purge: every entry")
        add("--keep", action="store_true", help="replay: leave the entries in the dead-letter")
        add("--dry-run", action="store_true", help="replay: only say what would be replayed")
        add("--yes", action="store_true", help="purge: really remove")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        action, tokens = _check_usage(args, opts)
        assert self.settings is not None
        try:
            self.config = HydraConfig.from_settings(self.settings)
        except HydraConfigError as exc:
            for problem in exc.problems:
                print(f"Configuration error: {problem}", file=sys.stderr)
            self.exitcode = 2
            return
        params = self.settings.getdict("REDIS_PARAMS")
        for name in ("redis_cls", "url"):  # scrapy-redis's own keys
            params.pop(name, None)
        self.store = open_store(self.config, params)
        try:
            self.exitcode = getattr(self, f"_{action}")(tokens, opts)
        except redis.exceptions.RedisError as exc:
            error = DEFAULT_REDACTOR.text(str(exc))
            print(f"Redis error at {self.store.describe()}: {error}", file=sys.stderr)
            self.exitcode = 1
        finally:
            self.store.close()

    # -- actions: each returns the exit status -------------------------------

    def _list(self, _: list[str], opts: argparse.Namespace) -> int:
        entries = self.store.read()
        filters = _filters(opts)
        matching = [stored for stored in entries if filters.match(stored)]
        shown = matching[: opts.limit] if opts.limit else matching
        if opts.as_json:
            for stored in shown:
                print(json.dumps(_as_json(stored), ensure_ascii=False))
        else:
            for line in _table(shown):
                print(line)
        total = f"{len(matching)} of {len(entries)}" if filters else f"{len(entries)}"
        cut = f", first {len(shown)} shown" if len(shown) < len(matching) else ""
        summary = f"{total} {_entries(len(entries))} in {self.store.describe()}{cut}"
        print(summary, file=sys.stderr if opts.as_json else sys.stdout)
        return 0

    def _show(self, tokens: list[str], _: argparse.Namespace) -> int:
        selected, missing = _resolve(self.store.read(), tokens)
        for stored in selected:
            if stored.entry is not None:
                print(stored.entry.model_dump_json(indent=2))
            else:
                print(f"Entry {stored.position}: {stored.problem}", file=sys.stderr)
                print(stored.text)
        return 1 if missing else 0

    def _replay(self, tokens: list[str], opts: argparse.Namespace) -> int:
        store = self.store
        if not isinstance(store, RedisDeadLetterStore):
            refusal = "Refused: replay puts messages back on a shared queue, and in embedded mode"
            refusal += " (no HYDRA_REDIS_URL) there is none. Set HYDRA_REDIS_URL to the queue's"
            refusal += " Redis, or take the payload from `scrapy deadletter show ID` and rerun it."
            print(refusal, file=sys.stderr)
            return 1
        selected, missing = self._select(tokens, opts)
        kinds = self.config.registry("task_kinds")
        done = refused = 0
        for stored in selected:
            plan = replay_plan(stored, self.config.deadletter_key, kinds)
            if isinstance(plan, str):
                print(f"Refused {_label(stored)}: {plan}", file=sys.stderr)
                refused += 1
                continue
            entry, payload = plan
            target = f"{entry.source} ({entry.kind or 'no kind'})"
            result = (
                1 if opts.dry_run else store.requeue(stored, entry.source, payload, keep=opts.keep)
            )
            if result == 1:
                what = f"Would replay {_label(stored)} onto {target}: {_clip(payload, 200)}"
                print(what if opts.dry_run else f"Replayed {_label(stored)} onto {target}")
                done += 1
                continue
            why = "no longer in the dead-letter (replayed or purged meanwhile)"
            if result < 0:
                why = f"key {entry.source} is not a list; nothing changed"
            print(f"Refused {_label(stored)}: {why}", file=sys.stderr)
            refused += 1
        verb = "Would replay" if opts.dry_run else "Replayed"
        kept = " (entries kept)" if opts.keep and not opts.dry_run else ""
        print(
            f"{verb} {done} of {len(selected)} selected {_entries(len(selected))}{kept}, "
            f"{refused} refused"
        )
        return 1 if missing or refused else 0

    def _purge(self, tokens: list[str], opts: argparse.Namespace) -> int:
        selected, missing = self._select(tokens, opts)
        where = self.store.describe()
        if not opts.yes:
            for line in _table(selected):
                print(f"would remove {line}")
            if selected:
                print(
                    f"{len(selected)} {_entries(len(selected))} would be removed from {where}; "
                    "nothing removed: run again with --yes",
                    file=sys.stderr,
                )
            return 1 if selected or missing else 0
        gone = 0
        for stored, removed in zip(selected, self.store.remove(selected), strict=True):
            if not removed:
                print(f"Not found: {_label(stored)} was removed meanwhile", file=sys.stderr)
                gone += 1
        removed_count = len(selected) - gone
        print(f"Removed {removed_count} {_entries(removed_count)} from {where}")
        return 1 if missing or gone else 0

    def _select(
        self, tokens: list[str], opts: argparse.Namespace
    ) -> tuple[list[StoredEntry], list[str]]:
        entries = self.store.read()
        if tokens:
            return _resolve(entries, tokens)
        filters = _filters(opts)
        selected = [stored for stored in entries if filters.match(stored)]
        if not selected:
            print(f"No entries match (of {len(entries)})", file=sys.stderr)
        return selected, []


def _check_usage(args: list[str], opts: argparse.Namespace) -> tuple[str, list[str]]:
    """``(action, ids)``, or a ``UsageError`` (exit 2) for anything ambiguous."""
    unknown = [arg for arg in args if arg.startswith("-")]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]}")
    if not args or args[0] not in ACTIONS:
        raise UsageError(f"give an action: {', '.join(ACTIONS)}")
    action, tokens = args[0], args[1:]
    for dest, (flag, actions) in OPTIONS.items():
        if getattr(opts, dest) and action not in actions:
            raise UsageError(f"{action} does not take {flag}", print_help=False)
    if opts.limit < 0:
        raise UsageError("--limit must be 0 (no limit) or more", print_help=False)
    if action == "list" and tokens:
        raise UsageError("list takes no ids (use show)", print_help=False)
    if action == "show" and not tokens:
        raise UsageError("show needs one or more ids or positions", print_help=False)
    if action in ("replay", "purge"):
        filtered = bool(opts.reasons or opts.sources or opts.kinds)
        if tokens and (filtered or opts.select_all):
            raise UsageError("give ids/positions or filters/--all, not both", print_help=False)
        if not (tokens or filtered or opts.select_all):
            raise UsageError(f"{action} needs ids/positions, a filter or --all", print_help=False)
    return action, tokens


def _filters(opts: argparse.Namespace) -> Filters:
    return Filters(frozenset(opts.reasons), frozenset(opts.sources), frozenset(opts.kinds))


def _resolve(entries: list[StoredEntry], tokens: list[str]) -> tuple[list[StoredEntry], list[str]]:
    """The entries tokens name (each once, in token order) and the tokens naming none."""
    found: dict[int, StoredEntry] = {}
    missing = []
    for token in tokens:
        try:
            stored = find(entries, token)
        except ValueError as exc:
            raise UsageError(str(exc), print_help=False) from None
        except LookupError as exc:
            print(f"Not found: {exc.args[0]}", file=sys.stderr)
            missing.append(token)
            continue
        found.setdefault(stored.position, stored)
    return list(found.values()), missing


def _entries(count: int) -> str:
    return "entry" if count == 1 else "entries"


def _label(stored: StoredEntry) -> str:
    return f"entry {stored.position} ({stored.id[:SHORT_ID] or 'unreadable'})"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(created_at: str) -> str:
    """To the second, in UTC when the time says its zone."""
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return created_at
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(entries: list[StoredEntry]) -> list[str]:
    """One aligned line per entry: position, id, time, reason, kind, source, error."""
    rows = []
    for stored in entries:
        entry = stored.entry
        if entry is None:
            rows.append([str(stored.position), "-", "-", "unreadable", "-", "-", stored.problem])
            continue
        rows.append([
            str(stored.position), entry.id[:SHORT_ID], _when(entry.created_at), entry.reason,
            entry.kind or "-", entry.source or "-", _clip(entry.error, ERROR_WIDTH),
        ])  # fmt: skip
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(6)]
    lines = []
    for row in rows:
        cells = [row[0].rjust(widths[0])] + [row[c].ljust(widths[c]) for c in range(1, 6)]
        lines.append("  ".join([*cells, row[6]]))
    return lines


def _as_json(stored: StoredEntry) -> dict[str, Any]:
    if stored.entry is None:
        return {"position": stored.position, "unreadable": stored.text, "problem": stored.problem}
    return {"position": stored.position, **stored.entry.model_dump(mode="json")}
