"""Real Scrapyd servers for tests: start one on a loopback port, deploy the project's egg.

Scrapyd runs from a temp dir holding a copy of scrapyd/scrapyd.conf, without the repo on
PYTHONPATH, so a job can only import Hydra from the egg that scrapyd-deploy uploaded.
The egg is built from a copy of the project, since `setup.py bdist_egg` leaves build/ and
*.egg-info behind.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "hydra"
USERNAME = "hydra"
START_TIMEOUT = 30.0
EGG_MARKER = 59.5  # LOGSTATS_INTERVAL in the deployed copy's settings (Scrapy's default: 60.0)


def tool(name: str) -> str:
    """A console script of this virtualenv (next to the interpreter), else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[scrapyd]'")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without HYDRA_* settings, Scrapy/Scrapyd variables or PYTHONPATH.

    Jobs inherit Scrapyd's environment, so a stray HYDRA_* variable (or the repo on
    PYTHONPATH) would change what the job does or where it imports Hydra from.
    """
    dropped = ("HYDRA_", "SCRAPY_", "SCRAPYD_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def tail(path: Path, chars: int = 6000) -> str:
    if not path.exists():
        return f"<{path} does not exist>"
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


@dataclass
class Scrapyd:
    """A running Scrapyd on a loopback port, with its working dir."""

    workdir: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = Path(self.output.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        endpoint: str,
        data: list[tuple[str, str]] | None = None,
        *,
        query: dict[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, dict[str, Any]]:
        """GET (or POST, with data) an endpoint; return the status and the decoded JSON."""
        url = f"{self.url}/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body)
        if auth:
            token = base64.b64encode(f"{USERNAME}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            with error:
                payload = error.read()
            try:
                return error.code, json.loads(payload or b"{}")
            except ValueError:
                return error.code, {"body": payload.decode(errors="replace")}

    def job_log(self, jobid: str, spider: str = "prices") -> str:
        return tail(self.workdir / "logs" / PROJECT / spider / f"{jobid}.log")

    def jobs(self) -> dict[str, Any]:
        """listjobs.json of the project."""
        status, jobs = self.request("listjobs.json", query={"project": PROJECT})
        assert status == 200 and jobs.get("status") == "ok", jobs
        return jobs

    def kill_jobs(self) -> None:
        """SIGKILL every pending or running job: one left behind would outlive Scrapyd."""
        status, jobs = self.request("listjobs.json", query={"project": PROJECT})
        if status != 200 or jobs.get("status") != "ok":
            return
        for job in jobs["pending"] + jobs["running"]:
            self.request(
                "cancel.json", [("project", PROJECT), ("job", job["id"]), ("signal", "KILL")]
            )

    def server_log(self) -> str:
        self.output.flush()
        return tail(self.log_path, 3000)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.output.close()


def start_scrapyd(
    workdir: Path, *, port: int | None = None, password: str | None = None, **environment: str
) -> Scrapyd:
    """A Scrapyd run from ``workdir`` (given a copy of scrapyd/scrapyd.conf), once it answers.

    ``environment`` is added to its clean environment, which its jobs inherit. ``port`` and
    ``password`` restart a stopped Scrapyd as it was (its eggs stay in ``workdir``).
    """
    shutil.copy(ROOT / "scrapyd" / "scrapyd.conf", workdir / "scrapyd.conf")
    port = free_port() if port is None else port
    password = secrets.token_urlsafe(16) if password is None else password
    env = clean_env(SCRAPYD_HTTP_PORT=str(port), SCRAPYD_PASSWORD=password, **environment)
    output = (workdir / "scrapyd.out").open("ab")
    process = subprocess.Popen(
        [tool("scrapyd")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    server = Scrapyd(workdir, port, password, process, output)

    def up() -> bool:
        if process.poll() is not None:
            log = server.server_log()
            raise RuntimeError(f"scrapyd exited with {process.returncode}:\n{log}")
        status, body = server.request("daemonstatus.json")
        return status == 200 and body.get("status") == "ok"

    try:
        wait_for(up, START_TIMEOUT, "scrapyd")
    except BaseException:
        server.stop()
        raise
    return server


def copy_project(copy: Path) -> Path:
    """The files scrapyd-deploy needs, copied to ``copy``, so that its build leftovers stay
    out of the repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    shutil.copytree(ROOT / "crawlers", copy / "crawlers", ignore=ignore)
    for name in ("scrapy.cfg", "setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, copy / name)
    # A marker only the deployed egg carries: `make` installs the repo in editable mode, so
    # without it a job that silently imported the repo's code would look just the same.
    with (copy / "crawlers" / "settings.py").open("a", encoding="utf-8") as settings:
        settings.write(f"\n# Added by {Path(__file__).name}: proves the job runs the egg.\n")
        settings.write(f"LOGSTATS_INTERVAL = {EGG_MARKER!r}\n")
    readme = ROOT / "README.md"
    if readme.exists():
        shutil.copy(readme, copy / "README.md")
    else:
        (copy / "README.md").write_text("", encoding="utf-8")  # pyproject names it as readme
    return copy


def deploy(server: Scrapyd, project_copy: Path) -> subprocess.CompletedProcess[str]:
    """`scrapyd-deploy env` of the project copy to ``server``."""
    env = clean_env(
        HYDRA_SCRAPYD_URL=server.url,
        SCRAPYD_USERNAME=USERNAME,
        SCRAPYD_PASSWORD=server.password,
    )
    return subprocess.run(
        [tool("scrapyd-deploy"), "env"],
        cwd=project_copy,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_deployed(deployed: subprocess.CompletedProcess[str]) -> None:
    output = f"stdout:\n{deployed.stdout[-3000:]}\nstderr:\n{deployed.stderr[-3000:]}"
    assert deployed.returncode == 0, f"scrapyd-deploy env failed:\n{output}"
