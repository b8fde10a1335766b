"""Seed 000's unit of work: a batch of price IDs fetched one by one."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: an ID becomes one URL path segment: no control characters, not a dot segment
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_ID_LENGTH = 1024


class PriceBatch(BaseModel):
    """A batch of price IDs; its remainder after a failure is a new ``PriceBatch``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, description="The run (controller request) it belongs to.")
    batch_id: str = Field(min_length=1, description="Unique within the run.")
    ids: list[str] = Field(
        min_length=1,
        max_length=100_000,
        description="Price IDs, fetched in this order; each is URL-quoted into the template, "
        "so it can never change the template's host or path prefix.",
    )
    url_template: str | None = Field(
        None,
        description="URL with an `{id}` placeholder; default: `HYDRA_PRICE_URL_TEMPLATE`.",
    )
    attempt: int = Field(0, ge=0, description="0 for a first dispatch, +1 per requeue.")
    region: str | None = Field(None, description="Region the dispatcher meant it for.")
    reason: str | None = Field(
        None, description="Why the previous attempt stopped (set on requeued remainders)."
    )

    @field_validator("ids")
    @classmethod
    def _ids_are_plain(cls, ids: list[str]) -> list[str]:
        for item in ids:
            if not item.strip():
                raise ValueError("ids must not contain blank strings")
            if len(item) > MAX_ID_LENGTH:
                raise ValueError(f"an id is longer than {MAX_ID_LENGTH} characters")
            if item in (".", "..") or _CONTROL.search(item):
                raise ValueError("ids must not be '.', '..' or hold control characters")
        return ids

    @field_validator("url_template")
    @classmethod
    def _template_has_placeholder(cls, template: str | None) -> str | None:
        if template is None:
            return None
        if "{id}" not in template:
            raise ValueError("url_template must contain the {id} placeholder")
        if len(template) > 2048 or _CONTROL.search(template):
            raise ValueError("url_template is too long or holds control characters")
        one, two = urlsplit(template.replace("{id}", "a")), urlsplit(template.replace("{id}", "b"))
        if not one.scheme or (one.scheme, one.netloc) != (two.scheme, two.netloc):
            raise ValueError("url_template needs a scheme, and {id} only after the host")
        return template

    def remainder(self, start: int, reason: str, *, next_attempt: bool = True) -> PriceBatch:
        """The IDs from ``start`` on, as the next attempt of this batch."""
        return self.model_copy(
            update={
                "ids": self.ids[start:],
                "attempt": self.attempt + int(next_attempt),
                "reason": reason,
                "region": None,  # any region may take it: the failing one is suspect
            }
        )
