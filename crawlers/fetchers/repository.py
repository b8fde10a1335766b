"""The fetchers repository: generated fetcher modules, versioned in git.

``HYDRA_FETCHERS_REPO`` is a local path (created and ``git init``-ed if
missing) or a remote URL (cloned into ``HYDRA_FETCHERS_CACHE`` and pulled at
start-up; every new version is pushed). Each version is its own readable module,
``fetchers/<slug>_fetcher_v<N>.py``, committed with a message that says why it
exists (a new channel, or the heal of vN and the failure that caused it). Old
versions stay in the tree and in history; a version can also be pinned to a
commit. All git calls block, so callers run them in a thread.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from crawlers.config import project_path
from crawlers.models.redaction import redact_url

if TYPE_CHECKING:
    from crawlers.config import HydraConfig

_IDENTITY = ["-c", "user.name=Hydra fetcher generator", "-c", "user.email=hydra@localhost"]
_REMOTE = re.compile(r"^(?:[a-z+]+://|[\w.-]+@[\w.-]+:)")


class RepositoryError(RuntimeError):
    """A git operation failed; the message never holds credentials of the remote."""


def fetcher_name(structure_id: str, version: int) -> str:
    """``shop.example.com`` v2 -> ``shop_example_com_fetcher_v2`` (a module name)."""
    slug = re.sub(r"[^0-9A-Za-z]+", "_", structure_id).strip("_").lower() or "site"
    if slug[0].isdigit():
        slug = f"site_{slug}"
    return f"{slug}_fetcher_v{version}"


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str


class FetcherRepository:
    def __init__(self, location: str, cache_dir: Path) -> None:
        self.location = location
        self.remote = bool(_REMOTE.match(location))
        self.path = cache_dir if self.remote else Path(location).expanduser()

    @classmethod
    def from_config(cls, config: HydraConfig) -> FetcherRepository:
        """``HYDRA_FETCHERS_REPO`` (a local path against the project) and its cache: the
        workers' repository, and the console's when a person approves a heal candidate."""
        location = config.fetchers_repo
        if "://" not in location and "@" not in location:
            location = str(project_path(location))
        return cls(location, project_path(config.fetchers_cache))

    def describe(self) -> str:
        return redact_url(self.location) if self.remote else str(self.path)

    # -- set-up ---------------------------------------------------------------

    def open(self) -> None:
        """Create, clone or update the working copy (at worker start-up)."""
        if self.remote:
            if (self.path / ".git").exists():
                self._git("pull", "--ff-only", "--quiet")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._git("clone", "--quiet", self.location, str(self.path), cwd=self.path.parent)
        elif not (self.path / ".git").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet")
        (self.path / "fetchers").mkdir(exist_ok=True)

    # -- versions --------------------------------------------------------------

    def module_path(self, name: str) -> Path:
        return self.path / "fetchers" / f"{name}.py"

    def commit(self, name: str, source: str, message: str) -> Commit:
        """Write one version's module and commit it (and push, for a remote)."""
        path = self.module_path(name)
        if path.exists() and path.read_text(encoding="utf-8") != source:
            raise RepositoryError(f"{name} exists with other code: versions are never rewritten")
        path.write_text(source, encoding="utf-8")
        self._git("add", str(path.relative_to(self.path)))
        self._git("commit", "--quiet", "-m", message)
        if self.remote:
            self._git("push", "--quiet", "origin", "HEAD")
        sha = self._git("rev-parse", "HEAD").strip()
        return Commit(sha, message)

    def history(self, name: str) -> list[Commit]:
        """Commits that touched a version's module, newest first."""
        out = self._git("log", "--format=%H%x00%B%x1e", "--", f"fetchers/{name}.py")
        commits = []
        for record in out.split("\x1e"):
            if record.strip():
                sha, _, message = record.strip().partition("\x00")
                commits.append(Commit(sha, message.strip()))
        return commits

    def source(self, name: str, commit: str | None = None) -> str:
        """A version's code, as committed (``commit``: pinned) or in the working tree."""
        if commit is None:
            return self.module_path(name).read_text(encoding="utf-8")
        if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
            raise RepositoryError(f"not a commit id: {commit!r}")
        return self._git("show", f"{commit}:fetchers/{name}.py")

    def load(self, name: str, commit: str | None = None) -> ModuleType:
        """Import a version by name (from the tree, or its code at a pinned commit)."""
        module_name = f"hydra_fetchers.{name}" + (f"_{commit[:12]}" if commit else "")
        if module_name in sys.modules:
            return sys.modules[module_name]
        if commit is None:
            spec = importlib.util.spec_from_file_location(module_name, self.module_path(name))
            if spec is None or spec.loader is None:
                raise RepositoryError(f"cannot import {name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = ModuleType(module_name)
            module.__file__ = f"{name}.py@{commit}"
            # our own committed code, at the commit the channel pins
            code = compile(self.source(name, commit), module.__file__, "exec")
            exec(code, module.__dict__)
        sys.modules[module_name] = module
        return module

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        command = ["git", *_IDENTITY, *args]
        done = subprocess.run(
            command, cwd=cwd or self.path, capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            text = redact_url(self.location)
            error = done.stderr.replace(self.location, text).strip()[-500:]
            raise RepositoryError(f"git {args[0]} failed in {self.describe()}: {error}")
        return done.stdout
