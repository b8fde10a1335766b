"""A private RabbitMQ server for tests: Debian's ``rabbitmq-server`` run as a plain process.

Everything lives in a temp dir: the node's data and logs, its config (no
plugins, a user with a random password), a fresh Erlang cookie in a private
``HOME``, and its own ``epmd`` on a free port in the foreground, so nothing is
left running once the server is stopped (a node started the usual way spawns
an ``epmd -daemon`` that outlives it). The AMQP and distribution ports are free
loopback ports; a RabbitMQ already running on 5672 is never touched.

Test modules use the ``rabbitmq_server`` fixture by importing it; however many
modules do, one server is started per session and stopped at its end.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.servers import free_port

USER = "hydra"


def _rabbitmq_script() -> str | None:
    """The versioned ``sbin/rabbitmq-server`` (``/usr/sbin/rabbitmq-server`` is a wrapper
    that switches to the ``rabbitmq`` user and writes to /var/log)."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return found[-1] if found else None


def _epmd() -> str | None:
    found = shutil.which("epmd") or sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))
    if isinstance(found, list):
        return found[-1] if found else None
    return found


class RabbitMQServer:
    """One RabbitMQ node on free loopback ports, with its own epmd."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.password = "pw-" + secrets.token_hex(12)
        self.nodename = f"hydra-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"

    def vhost_url(self, vhost: str) -> str:
        return self.url + quote(vhost, safe="")

    def start(self, timeout: float = 60) -> RabbitMQServer:
        script, epmd = _rabbitmq_script(), _epmd()
        if script is None or epmd is None:
            raise RuntimeError(
                "rabbitmq-server is not installed: run `make test`, which installs it"
            )
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {USER}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            # the tests fill no disk; a nearly full /tmp must not block publishers
            "disk_free_limit.absolute = 1MB\n"
        )
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.workdir / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_LOGS=str(self.workdir / "log" / "node.log"),
            RABBITMQ_PID_FILE=str(self.workdir / "node.pid"),
        )
        self._env = env
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        output = (self.workdir / "node.out").open("wb")
        try:
            self._node = subprocess.Popen(
                [script],
                env=env,
                cwd=self.workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C in the terminal reaches pytest only
            )
        finally:
            output.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <node> ARGS`` (through this node's epmd and cookie); stdout."""
        script = _rabbitmq_script()
        assert script is not None
        command = [str(Path(script).with_name("rabbitmqctl")), "-n", self.nodename, "-q", *args]
        done = subprocess.run(
            command, env=self._env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def queues(self, vhost: str = "/") -> dict[str, dict[str, Any]]:
        """Queue name -> its ``durable``, ``type``, ``arguments``, ``messages_ready``,
        ``messages_unacknowledged``."""
        columns = ["name", "durable", "type", "arguments"]
        columns += ["messages_ready", "messages_unacknowledged"]
        out = self.ctl("list_queues", "-p", vhost, "--formatter", "json", *columns)
        return {row["name"]: row for row in json.loads(out or "[]")}

    def close_connections(self) -> None:
        """Drop every client connection from the broker's side (a network cut)."""
        self.ctl("close_all_connections", "hydra test: connection cut")

    def _wait_ready(self, timeout: float) -> None:
        """The listener answers an AMQP protocol header, and the boot is complete."""
        deadline = time.monotonic() + timeout
        out = self.workdir / "node.out"
        while time.monotonic() < deadline:
            assert self._node is not None
            if self._node.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {out.read_text()[-2000:]}")
            if b"completed with" in out.read_bytes() and self._answers():
                return
            time.sleep(0.1)
        raise RuntimeError(f"rabbitmq-server did not come up within {timeout} s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1)[:1] == b"\x01"  # a connection.start frame
        except OSError:
            return False

    def stop(self) -> None:
        node, self._node = self._node, None
        if node is not None and node.poll() is None:
            node.terminate()  # beam stops the broker cleanly on SIGTERM
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(10)


_shared: dict[str, RabbitMQServer] = {}


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One server per session; the first module's fixture starts and stops it."""
    if "server" in _shared:
        yield _shared["server"]
        return
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")).start()
    _shared["server"] = server
    try:
        yield server
    finally:
        _shared.pop("server", None)
        server.stop()
