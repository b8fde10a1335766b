"""Message contracts: what other systems push onto Hydra's queues.

Each model validates one kind of message; ``docs/schemas/`` holds their JSON
Schema, exported by ``python -m crawlers.models``.
"""

from __future__ import annotations

from pydantic import TypeAdapter

from crawlers.models.deadletter import DeadLetterEntry
from crawlers.models.fetch_messages import ParsersMessage, StatusMessage
from crawlers.models.fetch_task import FETCH_TASK
from crawlers.models.job_status import JobStatusEvent, TriggerMessage
from crawlers.models.price_batch import PriceBatch
from crawlers.models.raw_record import RawRecord
from crawlers.models.regions import Region
from crawlers.models.run_events import RunEvent
from crawlers.models.task_config import TaskConfig
from crawlers.models.validation import validation_error_text

#: schema file name -> model, for the docs export
SCHEMAS: dict[str, TypeAdapter[object]] = {
    "price_batch": TypeAdapter(PriceBatch),
    "fetch_task": FETCH_TASK,  # type: ignore[dict-item]
    "deadletter_entry": TypeAdapter(DeadLetterEntry),
    "parsers_message": TypeAdapter(ParsersMessage),
    "status_message": TypeAdapter(StatusMessage),
    "run_event": TypeAdapter(RunEvent),
    "regions": TypeAdapter(list[Region]),
    "task_config": TypeAdapter(TaskConfig),
    "job_status_event": TypeAdapter(JobStatusEvent),
    "trigger_message": TypeAdapter(TriggerMessage),
    "raw_record": TypeAdapter(RawRecord),
}

__all__ = [
    "FETCH_TASK",
    "SCHEMAS",
    "DeadLetterEntry",
    "JobStatusEvent",
    "ParsersMessage",
    "PriceBatch",
    "RawRecord",
    "Region",
    "RunEvent",
    "StatusMessage",
    "TriggerMessage",
    "validation_error_text",
]
