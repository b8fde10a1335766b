"""One raw item on a raw-results stream (``stream://hydra:raw:...`` sinks), as the ETL reads it.

A spider's stream sink adds one entry per item, its ``message`` field holding
this model's JSON: the item itself and where it came from, so the DataProcessor
can pick the extractor of its task type and enrich it with its source.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class RawRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(
        max_length=512,
        description="The item's stable identity (the same item fetched again after a crash "
        "has the same key).",
    )
    task_type: str = Field(
        max_length=64,
        description="Task kind that produced it (`price_batch`, `fetch_task`, `web`...): "
        "selects the ETL's extractor.",
    )
    source: str = Field(max_length=128, description="Spider name.")
    task: str = Field("", max_length=512, description="The task run (lease) it belongs to.")
    job: str = Field("", max_length=200, description="Scheduler job ID (`HYDRA_JOB_ID`), if any.")
    worker: str = Field("", max_length=200, description="Worker that fetched it.")
    region: str = Field("", max_length=64, description="Region of that worker.")
    fetched_at: AwareDatetime = Field(description="When the sink accepted it.")
    item: dict[str, Any] = Field(description="The item's fields, as the spider yielded them.")
