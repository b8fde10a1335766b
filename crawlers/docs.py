"""Render the settings reference from :class:`HydraConfig`: ``python -m crawlers.docs``.

``docs/settings.md`` is this output; a test fails when the two differ.
"""

from __future__ import annotations

import json

from crawlers.config import HydraConfig

HEADER = """# Settings reference

Hydra's settings, generated from `crawlers/config.py` by `make docs`. Each can be
given as a Scrapy setting (`-s NAME=value`, `custom_settings`, Scrapyd's
`setting=NAME=value`) or as an environment variable of the same name; the Scrapy
setting wins. Lists accept `a,b` or a JSON list. An unknown `HYDRA_*` setting is
an error, so a typo cannot silently fall back to a default.

| Setting | Default | Meaning |
|---|---|---|
"""


def render() -> str:
    rows = []
    for field, name in HydraConfig.setting_names().items():
        info = HydraConfig.model_fields[field]
        default = info.get_default(call_default_factory=True)
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        rows.append(f"| `{name}` | `{shown}` | {info.description} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
