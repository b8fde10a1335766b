"""Why a record could not be processed: a reason a dead-letter can be sorted by.

A :class:`RecordError` is about one record only (its JSON, its task type, one of
its values): the processor turns it into a failure of that record and goes on
with the batch. Anything else raised while processing (Redis unreachable, the
embedding model missing) is the batch's problem and propagates, so the service
leaves the batch unacknowledged and tries again later.
"""

from __future__ import annotations

from typing import Literal

RecordErrorReason = Literal[
    "invalid_json",  # the entry is not JSON
    "invalid_record",  # JSON, but not a RawRecord
    "unknown_task_type",  # no extractor for its task type
    "missing_field",  # a field the extractor needs is absent or empty
    "invalid_value",  # a value that does not clean (a price, a date...)
    "extractor_error",  # the extractor itself broke on this record (a bug)
]

#: error texts are cut to this length: they travel in dead letters and logs
MAX_ERROR_CHARS = 500


class RecordError(Exception):
    """One record cannot be processed; ``reason`` says which step refused it."""

    def __init__(self, reason: RecordErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RecordErrorReason = reason
        self.detail = detail[:MAX_ERROR_CHARS]


class CleaningError(ValueError):
    """A value does not clean; the extractor turns it into ``invalid_value`` with the
    field's name (the parsers do not know which field they are parsing)."""


class EtlError(RuntimeError):
    """The processor cannot work (a dictionary file unreadable, the embedding model
    missing): not about one record."""
