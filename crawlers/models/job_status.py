"""What scheduled jobs report, and what other systems send to trigger a task.

A job the scheduler started carries its ID (``HYDRA_JOB_ID``); its
``JobStatusReporter`` extension publishes a :class:`JobStatusEvent` when it runs,
every few seconds while it runs (progress doubles as the heartbeat) and when it
ends, on ``HYDRA_JOB_STATUS_STREAM``. So the scheduler knows the truth also for
jobs it did not start itself (another replica's, a Scrapyd node's).

A :class:`TriggerMessage` is what another system adds to
``HYDRA_SCHEDULER_TRIGGER_STREAM`` to run a task now, the stream twin of
``POST /tasks/{name}/trigger``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from crawlers.models.task_config import ArgName, TaskName

JobEvent = Literal["running", "progress", "finished"]
JobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")]
StatValue = int | float | str | bool
#: stats a status event carries at most (Scrapy's stats are a few dozen keys)
MAX_STATS = 500
#: items a job reports (its first ones), and the JSON size of each at most
MAX_ITEMS, MAX_ITEM_BYTES = 5, 4096
#: the stats key under which the scheduler keeps a job's first items (the console shows them)
FIRST_ITEMS_KEY = "hydra/first_items"


class JobStatusEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: JobId = Field(description="The scheduler's job ID (`HYDRA_JOB_ID`).")
    event: JobEvent = Field(
        description="`running` once started, `progress` every `HYDRA_JOB_HEARTBEAT_SECONDS` "
        "(also the heartbeat), `finished` at the end."
    )
    at: AwareDatetime = Field(description="When the worker sent it.")
    worker: str = Field("", max_length=200, description="host:pid of the crawl process.")
    stats: dict[Annotated[str, StringConstraints(max_length=200)], StatValue] = Field(
        default_factory=dict,
        max_length=MAX_STATS,
        description="The crawl's Scrapy stats so far (final stats on `finished`).",
    )
    finish_reason: str | None = Field(
        None, max_length=200, description="Scrapy's close reason, on `finished`."
    )
    items: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="The first items the crawl scraped (at most 5, each at most 4 KiB of JSON, "
        "secret-looking fields masked), on every event once there are some.",
    )


class TriggerMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskName = Field(description="Name of the task config to run now.")
    args: dict[ArgName, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=100,
        description="Spider arguments that override the task's for this job only.",
    )
