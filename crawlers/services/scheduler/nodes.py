"""The scheduler's Scrapyd nodes: their load, where a job goes, and what each node runs.

Each node of ``HYDRA_SCHEDULER_NODES`` (``http://host:6800#slots=N``) takes up to N jobs
at once, counted node-wide from ``daemonstatus.json`` (Scrapyd's own ``max_proc`` may be
higher: the slots are what this scheduler allows). A job goes to the node with the most
free slots. A node that does not answer is marked down and left alone for
``HYDRA_SCHEDULER_NODE_RETRY_SECONDS``, so that a dead node does not cost every tick a
timeout.

Basic auth comes from ``HYDRA_SCRAPYD_USERNAME``/``HYDRA_SCRAPYD_PASSWORD``, or per node
from the URL's userinfo. Requests are made to the URL without it (httpx puts the request
URL in its errors), and nothing logged, returned or raised here carries credentials.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from crawlers.config import HydraConfig
from crawlers.models.redaction import DEFAULT_REDACTOR

logger = logging.getLogger(__name__)

DEFAULT_SLOTS = 4
_SLOTS = re.compile(r"slots=([0-9]{1,4})")
#: schedule.json's own fields: a spider argument of that name would be taken as one of them
RESERVED_ARGS = frozenset({"project", "spider", "jobid", "setting", "priority", "_version"})
#: Scrapyd names the job's log file after its ID without checking it (no "/" or "..")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
#: the first schedule.json of a project version runs `scrapy list` on the node (seconds)
SCHEDULE_TIMEOUT = httpx.Timeout(60.0, connect=3.0)
_SYNTAX = "expected http(s)://[user:password@]host[:port][/path][#slots=N], N >= 1"


class NodeDown(Exception):
    """The node did not answer as Scrapyd does (unreachable, timeout, HTTP error, not JSON)."""


class ScrapydError(Exception):
    """The node answered but refused (``{"status": "error"}``: unknown project or spider)."""


@dataclass
class NodeState:
    """One node as the scheduler sees it; times are readings of the nodes' clock."""

    url: str  #: without credentials: the node's name in job records and the API
    slots: int
    running: int = 0
    pending: int = 0
    up: bool = True  #: until a request fails (the constructor does no I/O)
    down_since: float | None = None
    last_error: str | None = None
    checked_at: float | None = None

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running - self.pending)


@dataclass(frozen=True)
class ScheduledOnNode:
    node: str  #: the node's URL, without credentials
    jobid: str  #: Scrapyd's job ID (the job ID it was asked to use)


@dataclass
class _Node:
    state: NodeState
    auth: httpx.BasicAuth | None
    retry_at: float = 0.0


def _parse(entry: str, number: int, config: HydraConfig) -> _Node:
    """A ``HYDRA_SCHEDULER_NODES`` entry; errors name the entry by position, never echo it
    (a malformed URL may not split where its password ends)."""
    where = f"HYDRA_SCHEDULER_NODES entry {number}"
    text, _, suffix = entry.strip().partition("#")
    match = _SLOTS.fullmatch(suffix) if suffix else None
    if suffix and (match is None or int(match[1]) < 1):
        raise ValueError(f"{where}: bad #slots suffix; {_SYNTAX}")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"{where}: not a URL; {_SYNTAX}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: not an http(s) URL; {_SYNTAX}")
    hostport = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, hostport, parts.path.rstrip("/"), "", ""))
    auth = None
    if parts.username is not None:
        auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    elif config.scrapyd_username:
        auth = httpx.BasicAuth(config.scrapyd_username, config.scrapyd_password)
    slots = int(match[1]) if match else DEFAULT_SLOTS
    return _Node(NodeState(url=url, slots=slots), auth)


def _short(text: str) -> str:
    return DEFAULT_REDACTOR.text(" ".join(text.split()))[:200]


class ScrapydNodes:
    """The pool of Scrapyd nodes; all network I/O is async and bounded by timeouts."""

    def __init__(self, config: HydraConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.project = config.scrapyd_project
        self.retry_seconds = config.scheduler_node_retry_seconds
        self.clock = clock
        self._nodes: dict[str, _Node] = {}
        for number, entry in enumerate(config.scheduler_nodes, start=1):
            node = _parse(entry, number, config)
            if node.state.url in self._nodes:
                raise ValueError(f"HYDRA_SCHEDULER_NODES entry {number}: {node.state.url} twice")
            self._nodes[node.state.url] = node
        self._client = httpx.AsyncClient(timeout=TIMEOUT)

    def states(self) -> list[NodeState]:
        """Copies, in configuration order."""
        return [dataclasses.replace(node.state) for node in self._nodes.values()]

    def _askable(self, node: _Node) -> bool:
        """Up, or down for long enough to be tried again."""
        return node.state.up or self.clock() >= node.retry_at

    async def refresh(self) -> None:
        """Read each askable node's load (``daemonstatus.json``), all at once."""
        askable = [node for node in self._nodes.values() if self._askable(node)]
        await asyncio.gather(*(self._poll(node) for node in askable))

    async def _poll(self, node: _Node) -> None:
        try:
            body = await self._call(node, "daemonstatus.json")
            running, pending = body.get("running"), body.get("pending")
            if not (isinstance(running, int) and isinstance(pending, int)):
                raise NodeDown("daemonstatus.json without running/pending counts")
        except (NodeDown, ScrapydError) as exc:
            self._down(node, str(exc))
            return
        node.state.running, node.state.pending = running, pending

    async def schedule(
        self, job_id: str, spider: str, args: dict[str, str], settings: dict[str, str]
    ) -> ScheduledOnNode | None:
        """Start the job on the up node with the most free slots (ties: the least loaded,
        then the first listed); a node that fails is marked down and the next one tried.

        None if no node is up with a free slot. :class:`ScrapydError` if every node that
        answered refused the job (its spider is unknown there, say). The job counts as
        pending on its node at once, so one tick's jobs spread without re-polling.
        """
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"job ID {job_id!r} is not a safe Scrapyd job ID")
        reserved = sorted(RESERVED_ARGS.intersection(args))
        if reserved:
            raise ValueError(f"spider arguments named like schedule.json fields: {reserved}")
        form: dict[str, str | list[str]] = {
            **args,
            "project": self.project,
            "spider": spider,
            "jobid": job_id,
            "setting": [f"{name}={value}" for name, value in settings.items()],
        }
        order = list(self._nodes.values())
        candidates = sorted(
            (node for node in order if node.state.up and node.state.free > 0),
            key=lambda node: (-node.state.free, node.state.running + node.state.pending),
        )  # sorted() is stable: ties keep the configuration order
        refusal: ScrapydError | None = None
        for node in candidates:
            node.state.pending += 1  # before the await: concurrent calls spread too
            try:
                body = await self._call(node, "schedule.json", form, timeout=SCHEDULE_TIMEOUT)
            except NodeDown as exc:
                node.state.pending -= 1
                self._down(node, str(exc))
                continue
            except ScrapydError as exc:
                node.state.pending -= 1
                logger.warning("Scrapyd node %s refused job %s: %s", node.state.url, job_id, exc)
                refusal = ScrapydError(f"{node.state.url} refused job {job_id}: {exc}")
                continue
            return ScheduledOnNode(node.state.url, str(body.get("jobid") or job_id))
        if refusal is not None:
            raise refusal
        return None

    async def jobs(self, node_url: str) -> dict[str, str] | None:
        """The project's jobs on the node: ``{jobid: "pending"|"running"|"finished"}``
        (Scrapyd remembers ``finished_to_keep`` finished ones). None if the node is down."""
        node = self._nodes.get(node_url.rstrip("/"))
        if node is None or not self._askable(node):
            return None
        try:
            body = await self._call(node, "listjobs.json", params={"project": self.project})
        except NodeDown as exc:
            self._down(node, str(exc))
            return None
        except ScrapydError as exc:  # "project not found": nothing deployed, nothing runs
            logger.warning("Scrapyd node %s lists no jobs: %s", node.state.url, exc)
            return {}
        listed: dict[str, str] = {}
        for state in ("finished", "pending", "running"):  # a live job beats a finished namesake
            for job in body.get(state) or ():
                if isinstance(job, dict) and isinstance(job.get("id"), str):
                    listed[job["id"]] = state
        return listed

    async def cancel(self, node_url: str, jobid: str) -> None:
        """Stop the job gracefully (SIGINT: it stores what it fetched); errors are logged."""
        node = self._nodes.get(node_url.rstrip("/"))
        if node is None or not self._askable(node):
            logger.warning("Job %s not cancelled: node %s is unknown or down", jobid, node_url)
            return
        form = {"project": self.project, "job": jobid, "signal": "INT"}
        try:
            await self._call(node, "cancel.json", form)
        except NodeDown as exc:
            self._down(node, str(exc))
            logger.warning("Job %s not cancelled on %s: %s", jobid, node.state.url, exc)
        except ScrapydError as exc:
            logger.warning("Job %s not cancelled on %s: %s", jobid, node.state.url, exc)

    async def log_tail(self, node_url: str, path: str, max_bytes: int = 1 << 20) -> str | None:
        """The last ``max_bytes`` of a file Scrapyd serves (a job's log, ``logs/...``);
        None if the node is unknown, down, or has no such file."""
        node = self._nodes.get(node_url.rstrip("/"))
        if node is None or not self._askable(node) or not path.startswith("logs/"):
            return None
        if ".." in path.split("/"):
            return None
        auth = node.auth or httpx.USE_CLIENT_DEFAULT
        tail = bytearray()
        # streamed, keeping the tail: Twisted answers a suffix Range longer than the file
        # with a 500, so the file is read whole, never held whole
        try:
            async with self._client.stream(
                "GET", f"{node.state.url}/{path}", auth=auth, timeout=TIMEOUT
            ) as answer:
                if answer.status_code != 200:
                    return None
                async for chunk in answer.aiter_bytes():
                    tail += chunk
                    del tail[: max(0, len(tail) - max_bytes)]
        except httpx.HTTPError:
            return None
        return tail.decode("utf-8", "replace")

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(
        self,
        node: _Node,
        endpoint: str,
        form: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> dict[str, Any]:
        """GET (or POST ``form``) an endpoint; the answer's JSON if its status is ok."""
        url = f"{node.state.url}/{endpoint}"
        auth = node.auth or httpx.USE_CLIENT_DEFAULT  # the client has none
        try:
            if form is None:
                answer = await self._client.get(url, params=params, auth=auth, timeout=timeout)
            else:
                answer = await self._client.post(url, data=form, auth=auth, timeout=timeout)
        except httpx.TimeoutException:
            raise NodeDown(f"{endpoint}: timed out") from None
        except httpx.HTTPError as exc:
            raise NodeDown(_short(f"{endpoint}: {type(exc).__name__}: {exc}")) from None
        if answer.status_code != 200:
            raise NodeDown(f"{endpoint}: HTTP {answer.status_code}")
        try:
            body = answer.json()
        except ValueError:
            raise NodeDown(f"{endpoint}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise NodeDown(f"{endpoint}: the answer is not a JSON object")
        if body.get("status") != "ok":
            raise ScrapydError(_short(str(body.get("message") or body)))
        self._up(node)
        return body

    def _down(self, node: _Node, reason: str) -> None:
        now = self.clock()
        state = node.state
        if state.up:
            logger.warning(
                "Scrapyd node %s is down (%s); not asked again for %g s",
                state.url, reason, self.retry_seconds,
            )  # fmt: skip
            state.up, state.down_since = False, now
        else:
            logger.debug("Scrapyd node %s still down: %s", state.url, reason)
        state.last_error, state.checked_at = reason, now
        node.retry_at = now + self.retry_seconds

    def _up(self, node: _Node) -> None:
        state = node.state
        if not state.up:
            logger.info("Scrapyd node %s is up again", state.url)
            state.up, state.down_since, state.last_error = True, None, None
        state.checked_at = self.clock()
