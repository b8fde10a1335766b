"""Run a scheduled job as a local ``scrapy crawl`` process, and read how it ended.

``HYDRA_*`` settings of the task go in the child's environment (Scrapy logs
``-s`` overrides, which could hold secrets); other settings go as ``-s``. Each
job gets a folder under ``HYDRA_SCHEDULER_JOBS_DIR`` with its log and the final
stats (``HYDRA_SUMMARY_PATH``), which the scheduler keeps and serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from crawlers.config import project_root
from crawlers.models.task_config import TaskConfig


@dataclass
class RunningJob:
    job_id: str
    task: str
    process: asyncio.subprocess.Process
    folder: Path
    #: when the scheduler started it (its timeout counts from there)
    started_at: datetime | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "job.log"

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    def stats(self) -> dict[str, Any]:
        try:
            summary = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        stats: dict[str, Any] = summary.get("stats", {})
        return stats


class LocalJobLauncher:
    def __init__(
        self,
        jobs_dir: Path,
        environ: dict[str, str] | None = None,
        report_env: dict[str, str] | None = None,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.environ = dict(os.environ) if environ is None else environ
        self.report_env = report_env or {}

    async def start(self, job_id: str, task: TaskConfig, args: dict[str, str]) -> RunningJob:
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        env = {**self.environ, **self.report_env}
        command = [sys.executable, "-m", "scrapy", "crawl", task.spider]
        for name, value in args.items():
            command += ["-a", f"{name}={value}"]
        for name, setting in task.spider_settings(self.environ).items():
            text = setting if isinstance(setting, str) else json.dumps(setting)
            if name.startswith("HYDRA_"):
                env[name] = text
            else:
                command += ["-s", f"{name}={text}"]
        env["HYDRA_SUMMARY_PATH"] = str(folder / "summary.json")
        env["HYDRA_JOB_ID"] = job_id  # its JobStatusReporter reports under this ID
        if "HYDRA_JOB_STATUS_STREAM" in self.report_env:  # where the scheduler listens
            env["HYDRA_JOB_STATUS_STREAM"] = self.report_env["HYDRA_JOB_STATUS_STREAM"]
        command += ["-s", f"LOG_FILE={folder / 'job.log'}"]
        process = await asyncio.create_subprocess_exec(
            *command, cwd=project_root(), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return RunningJob(job_id, task.name, process, folder)

    async def stop(self, job: RunningJob, *, kill_after: float = 30.0) -> None:
        """Graceful first (SIGINT: the crawl stores what it fetched), then SIGKILL."""
        if job.process.returncode is not None:
            return
        job.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(job.process.wait(), kill_after)
        except TimeoutError:
            job.process.kill()
            await job.process.wait()
