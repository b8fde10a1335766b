"""Export the message contracts' JSON Schema: ``python -m crawlers.models [DIR]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crawlers.models import SCHEMAS


def render(name: str) -> str:
    schema = SCHEMAS[name].json_schema()
    schema.setdefault("title", name)
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name in SCHEMAS:
        (target / f"{name}.schema.json").write_text(render(name))
        print(target / f"{name}.schema.json")


if __name__ == "__main__":
    main(sys.argv[1:])
