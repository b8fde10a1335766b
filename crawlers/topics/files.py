"""Topics as JSON-lines files (embedded mode): ``{HYDRA_TOPICS_PATH}/{topic}.jsonl``.

Each line is ``{"idempotency_key": ..., "message": {...}}``. Appends are fsynced
before ``publish`` returns and take the file's lock, so several processes can
share a topic file.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from crawlers.config import HydraConfig, project_path

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class JsonLinesTopics:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JsonLinesTopics:
        return cls(project_path(HydraConfig.from_crawler(crawler).topics_path))

    async def open(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    def path(self, topic: str) -> Path:
        return self.directory / (re.sub(r"[^A-Za-z0-9._-]", "_", topic) + ".jsonl")

    async def publish(self, topic: str, message: str, idempotency_key: str) -> None:
        line = json.dumps({"idempotency_key": idempotency_key, "message": json.loads(message)})
        await asyncio.to_thread(self._append, self.path(topic), line + "\n")

    @staticmethod
    def _append(path: Path, line: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        return None

    def describe(self, topic: str) -> str:
        return str(self.path(topic))
