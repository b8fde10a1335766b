"""Items Hydra spiders produce; pipelines see them through itemadapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PriceItem:
    """One fetched price (seed 000): the row that sinks store."""

    run_id: str
    batch_id: str
    id: str
    data: Any
    fetched_at: str
    region: str
    attempt: int
