"""Seed 000's regions: where workers run and through which egress they fetch.

``HYDRA_REGIONS`` is inline JSON, or the path of a JSON or YAML file holding
the same list. Without it there is one implicit region, ``default``, whose
queue is the plain ``HYDRA_PRICES_QUEUE_KEY``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

DEFAULT_REGION = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_region_name(name: str) -> str:
    """Region names end up in Redis keys and field names: plain characters only."""
    if not _NAME.match(name):
        raise ValueError("a region name is 1-64 letters, digits, '_', '.' or '-'")
    return name


class Region(BaseModel):
    """One region: a name, an egress proxy, its neighbours, where its worker runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Letters, digits, `_.-`; part of the region's queue key.")
    egress: str | None = Field(
        None,
        description="HTTP proxy URL every request of the region's worker goes through "
        "(Scrapy's `proxy` meta); credentials in it are never logged.",
    )
    neighbours: list[str] = Field(
        default_factory=list, description="Regions that take over when this one is blocked."
    )
    start: bool | None = Field(
        None, description="Active when the controller starts (default: only the first region)."
    )
    scrapyd: str | None = Field(
        None,
        description="Scrapyd node (`http://host:6800`) that runs this region's worker; "
        "unset: a local `scrapy crawl prices` process.",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return check_region_name(name)

    @field_validator("egress", "scrapyd")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+/?$", url):
            raise ValueError("must be an http(s)://host:port URL")
        return url

    @field_validator("scrapyd")
    @classmethod
    def _no_credentials(cls, url: str | None) -> str | None:
        if url is not None and "@" in url:  # shown in GET /regions: credentials come from
            raise ValueError("no credentials in the URL: set HYDRA_SCRAPYD_USERNAME/PASSWORD")
        return url


class RegionSet(BaseModel):
    regions: list[Region]

    @model_validator(mode="after")
    def _consistent(self) -> RegionSet:
        names = [region.name for region in self.regions]
        if len(set(names)) != len(names):
            raise ValueError("region names must be unique")
        for region in self.regions:
            unknown = [n for n in region.neighbours if n not in names or n == region.name]
            if unknown:
                raise ValueError(f"region {region.name}: unknown neighbours {unknown}")
        return self


_REGIONS = TypeAdapter(list[Region])


def parse_regions(value: Any) -> list[Region]:
    """Regions from a list, inline JSON, or a JSON/YAML file path; ``start`` resolved."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if not text.startswith("["):
            path = Path(text).expanduser()
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                import yaml

                value = yaml.safe_load(text)
            else:
                value = json.loads(text)
        else:
            value = json.loads(text)
    regions = RegionSet(regions=_REGIONS.validate_python(value)).regions
    if regions and not any(region.start for region in regions):
        regions[0] = regions[0].model_copy(update={"start": True})
    return [r if r.start is not None else r.model_copy(update={"start": False}) for r in regions]
