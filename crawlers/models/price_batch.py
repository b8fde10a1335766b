"""Seed 000's unit of work: a batch of price IDs fetched one by one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PriceBatch(BaseModel):
    """A batch of price IDs; its remainder after a failure is a new ``PriceBatch``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, description="The run (controller request) it belongs to.")
    batch_id: str = Field(min_length=1, description="Unique within the run.")
    ids: list[str] = Field(min_length=1, description="Price IDs, fetched in this order.")
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
    def _ids_are_not_blank(cls, ids: list[str]) -> list[str]:
        if any(not item.strip() for item in ids):
            raise ValueError("ids must not contain blank strings")
        return ids

    @field_validator("url_template")
    @classmethod
    def _template_has_placeholder(cls, template: str | None) -> str | None:
        if template is not None and "{id}" not in template:
            raise ValueError("url_template must contain the {id} placeholder")
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
