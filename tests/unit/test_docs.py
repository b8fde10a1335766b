"""The reference docs stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crawlers.docs import render
from crawlers.models import SCHEMAS
from crawlers.models.__main__ import render as render_schema

ROOT = Path(__file__).resolve().parents[2]


def test_settings_reference_is_current() -> None:
    assert (ROOT / "docs/settings.md").read_text() == render(), "run `make docs`"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schemas_are_current(name: str) -> None:
    path = ROOT / "docs/schemas" / f"{name}.schema.json"
    assert path.read_text() == render_schema(name), "run `make docs`"


def test_every_stat_key_is_documented() -> None:
    documented = (ROOT / "docs/stats.md").read_text()
    used: set[str] = set()
    for path in (ROOT / "crawlers").rglob("*.py"):
        for key in re.findall(r"[\"'](hydra/[a-z_/]+)(\{)?", path.read_text()):
            used.add(key[0] + ("<" if key[1] else ""))
    assert used, "no stats found: the pattern is broken"
    missing = [key for key in sorted(used) if key.rstrip("<") not in documented]
    assert not missing, f"undocumented stats: {missing}"
