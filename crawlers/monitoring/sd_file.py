"""Prometheus file-based service discovery (``file_sd_configs``) for workers that come and go.

The file is a JSON list of ``{"targets": ["host:port"], "labels": {...}}``
groups, one per running worker. Any number of workers on one machine share it:
every change takes an exclusive lock on a sidecar file (``<file>.lock``; the
file itself is replaced, so it cannot carry the lock), reads the list, changes
its own entry and writes the result to a temporary file that replaces the old
one at once. Prometheus, which reads the file whenever it changes, never sees
a half-written list.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TargetGroup = dict[str, Any]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_groups(path: Path) -> list[TargetGroup]:
    """The target groups in ``path``; a missing or unreadable file counts as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        logger.warning("Service-discovery file %s unreadable (%s): rewriting it", path, exc)
        return []
    if not isinstance(data, list):
        return []
    return [group for group in data if isinstance(group, dict)]


def _write(path: Path, groups: list[TargetGroup]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(groups, file, indent=1, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _targets(group: TargetGroup) -> list[Any]:
    targets = group.get("targets")
    return targets if isinstance(targets, list) else []


def add_target(path: Path, target: str, labels: dict[str, str]) -> None:
    """Add (or replace) the group of ``target``."""
    with _locked(path):
        groups = [group for group in read_groups(path) if target not in _targets(group)]
        groups.append({"targets": [target], "labels": dict(labels)})
        _write(path, groups)


def remove_target(path: Path, target: str) -> None:
    """Remove the group of ``target`` (nothing to do if it is not there)."""
    with _locked(path):
        groups = read_groups(path)
        kept = [group for group in groups if target not in _targets(group)]
        if kept != groups or not path.exists():
            _write(path, kept)
