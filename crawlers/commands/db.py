"""``scrapy db upgrade|current|check``: the state database's migrations, for operators.

Workers migrate the database themselves when they start (``StateDB.open``);
this command does it ahead of a deployment (``upgrade``), says where a database
stands (``current``) and gates a deployment or a health check on it (``check``:
exit 1 unless at this code's head). It reads ``HYDRA_DB_URL`` like the workers
and prints it only redacted. Reference: ``docs/commands.md``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from sqlalchemy.exc import SQLAlchemyError

from crawlers.commands.crawl import CONFIG_ERROR
from crawlers.config import HydraConfig, HydraConfigError
from crawlers.db.state import StateDB, StateDBError, head_revision, known_revision
from crawlers.models.redaction import DEFAULT_REDACTOR

if TYPE_CHECKING:
    import argparse

ACTIONS = ("upgrade", "current", "check")


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "upgrade|current|check"

    def short_desc(self) -> str:
        return "Migrate the state database (HYDRA_DB_URL), or show or check its revision"

    def long_desc(self) -> str:
        return (
            "upgrade: apply the migrations up to this code's head (safe while workers start). "
            "current: print the database's revision ('none' if not migrated). check: exit 1 "
            "unless the database is at head. Exit status: 0 done, 1 not at head or database "
            "error, 2 usage or configuration error. See docs/commands.md."
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1 or args[0] not in ACTIONS:
            raise UsageError(f"give one action: {', '.join(ACTIONS)}")
        assert self.settings is not None
        try:
            config = HydraConfig.from_settings(self.settings)
            db = StateDB(config.db_url)
        except HydraConfigError as exc:
            self._config_error(exc.problems)
            return
        except ValueError as exc:
            self._config_error([f"HYDRA_DB_URL: {exc}"])
            return
        try:
            self.exitcode = getattr(self, f"_{args[0]}")(db)
        except (SQLAlchemyError, StateDBError) as exc:
            error = " ".join(DEFAULT_REDACTOR.text(str(getattr(exc, "orig", None) or exc)).split())
            print(f"Database error at {db.describe()}: {error}", file=sys.stderr)
            self.exitcode = 1
        finally:
            db.dispose()

    def _config_error(self, problems: list[str]) -> None:
        for problem in problems:
            print(f"Configuration error: {problem}", file=sys.stderr)
        self.exitcode = CONFIG_ERROR

    # -- actions: each returns the exit status -------------------------------

    def _upgrade(self, db: StateDB) -> int:
        before = db.current_revision()
        db.upgrade()
        after = db.current_revision()
        if before == after:
            print(f"{db.describe()} is already at {after} (head)")
        else:
            print(f"Upgraded {db.describe()} from {before or 'an empty database'} to {after}")
        return 0

    def _current(self, db: StateDB) -> int:
        revision = db.current_revision()
        print(f"{revision} (head)" if revision == head_revision() else revision or "none")
        return 0

    def _check(self, db: StateDB) -> int:
        revision, head = db.current_revision(), head_revision()
        if revision == head:
            print(f"{db.describe()} is at head ({head})")
            return 0
        if revision is None:
            why = f"not migrated (head is {head}): run `scrapy db upgrade`"
        elif known_revision(revision):
            why = f"at {revision}, not at head ({head}): run `scrapy db upgrade`"
        else:
            why = f"at {revision}, which this code does not know (head is {head}): newer Hydra?"
        print(f"{db.describe()} is {why}", file=sys.stderr)
        return 1
