"""End to end through a real Scrapyd: basic auth, `scrapyd-deploy env`, and a `prices` job.

Scrapyd runs from a temp dir holding a copy of scrapyd/scrapyd.conf, without the repo on
PYTHONPATH, so the job can only import Hydra from the egg that scrapyd-deploy uploaded.
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
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import read_jsonl, read_summary
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "hydra"
USERNAME = "hydra"
START_TIMEOUT = 30.0
JOB_TIMEOUT = 90.0
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


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapyd]:
    workdir = tmp_path_factory.mktemp("scrapyd")
    shutil.copy(ROOT / "scrapyd" / "scrapyd.conf", workdir / "scrapyd.conf")
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = clean_env(SCRAPYD_HTTP_PORT=str(port), SCRAPYD_PASSWORD=password)
    output = (workdir / "scrapyd.out").open("wb")
    process = subprocess.Popen(
        [tool("scrapyd")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    server = Scrapyd(workdir, port, password, process, output)
    try:

        def up() -> bool:
            if process.poll() is not None:
                log = server.server_log()
                raise RuntimeError(f"scrapyd exited with {process.returncode}:\n{log}")
            status, body = server.request("daemonstatus.json")
            return status == 200 and body.get("status") == "ok"

        wait_for(up, START_TIMEOUT, "scrapyd")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files scrapyd-deploy needs, copied, so that its build leftovers stay out of the repo."""
    copy = tmp_path_factory.mktemp("project")
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


@pytest.fixture(scope="module")
def deployed(scrapyd: Scrapyd, project_copy: Path) -> subprocess.CompletedProcess[str]:
    """`scrapyd-deploy env` against the test's Scrapyd (run once, checked by the tests)."""
    env = clean_env(
        HYDRA_SCRAPYD_URL=scrapyd.url,
        SCRAPYD_USERNAME=USERNAME,
        SCRAPYD_PASSWORD=scrapyd.password,
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


def test_api_requires_basic_auth(scrapyd: Scrapyd) -> None:
    status, _ = scrapyd.request("daemonstatus.json", auth=False)
    assert status == 401
    status, body = scrapyd.request("daemonstatus.json")
    assert status == 200, body
    assert body["status"] == "ok"


def test_deploy_env_target(scrapyd: Scrapyd, deployed: subprocess.CompletedProcess[str]) -> None:
    assert_deployed(deployed)
    status, projects = scrapyd.request("listprojects.json")
    assert status == 200, projects
    assert PROJECT in projects["projects"], projects
    status, spiders = scrapyd.request("listspiders.json", query={"project": PROJECT})
    assert status == 200 and spiders.get("status") == "ok", spiders
    assert "prices" in spiders["spiders"], spiders


def test_prices_job_runs_from_the_egg(
    scrapyd: Scrapyd,
    deployed: subprocess.CompletedProcess[str],
    sandbox: Any,
    tmp_path: Path,
) -> None:
    assert_deployed(deployed)
    ids = [str(number) for number in range(1, 11)]
    sink = tmp_path / "out.jsonl"
    deadletter = tmp_path / "dl.jsonl"
    summary_path = tmp_path / "summary.json"
    status, scheduled = scrapyd.request(
        "schedule.json",
        [
            ("project", PROJECT),
            ("spider", "prices"),
            ("ids", ",".join(ids)),
            ("url_template", sandbox.url_template),
            ("setting", f"HYDRA_SINKS=jsonl://{sink}"),
            ("setting", f"HYDRA_DEADLETTER_PATH={deadletter}"),
            ("setting", f"HYDRA_SUMMARY_PATH={summary_path}"),
        ],
    )
    assert status == 200 and scheduled.get("status") == "ok", scheduled
    jobid: str = scheduled["jobid"]

    jobs: dict[str, Any] = {}
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        status, jobs = scrapyd.request("listjobs.json", query={"project": PROJECT})
        assert status == 200, jobs
        if any(job["id"] == jobid for job in jobs["finished"]):
            break
        time.sleep(0.2)
    else:
        pytest.fail(
            f"job {jobid} not finished within {JOB_TIMEOUT:.0f} s: {jobs}\n"
            f"job log:\n{scrapyd.job_log(jobid)}\nscrapyd log:\n{scrapyd.server_log()}"
        )

    log = scrapyd.job_log(jobid)
    context = f"job log:\n{log}"
    assert f"'LOGSTATS_INTERVAL': {EGG_MARKER!r}" in log, f"job did not run the egg\n{context}"
    rows = read_jsonl(sink)
    assert sorted(row["id"] for row in rows) == sorted(ids), f"sink rows: {rows}\n{context}"
    for row in rows:
        assert isinstance(row["data"], dict) and "price" in row["data"], f"{row}\n{context}"
    assert summary_path.exists(), f"no summary written\n{context}"
    summary = read_summary(summary_path)
    assert summary["reason"] == "finished", f"{summary}\n{context}"
    assert read_jsonl(deadletter) == [], f"dead letters written\n{context}"


def test_start_script_refuses_without_password(tmp_path: Path) -> None:
    process = subprocess.run(
        [str(ROOT / "scrapyd" / "start.sh")],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert process.returncode == 2, process.stderr
    assert "SCRAPYD_PASSWORD" in process.stderr
    assert process.stdout == ""
