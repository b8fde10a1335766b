"""A private clickhouse-server (Debian's 18.16) on free loopback ports: demo and tests.

The package does not start a server; each :class:`ClickHouseServer` runs its own as a
plain process with a ``<yandex>`` config in its work dir (data, tmp, logs there too),
listening on 127.0.0.1 only. It starts in about a second. ``kill()`` or ``stop()``
then ``start()`` brings the same server back on the same ports with the same data,
as a restarted production server would be. Users: ``default`` (no password) and
any given to the constructor.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from clickhouse_driver import Client  # type: ignore[import-untyped]

from crawlers.sandbox.redis_server import wait_for
from crawlers.sandbox.server import _free_port as free_port

CLICKHOUSE_SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>20M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
{extra_users}    </users>
    <quotas><default></default></quotas>
</yandex>
"""


_USER = """        <{user}>
            <password>{password}</password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{user}>
"""


class ClickHouseServer:
    """``clickhouse-server`` in ``workdir`` on free ports; restartable with its data."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        #: users besides ``default`` (no password): name -> password
        self.users = dict(users or {})
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "stdout.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def uri(self, table: str, *, user: str = "", password: str = "", **options: Any) -> str:
        """``clickhouse://[user:password@]127.0.0.1:port/table`` (``table``: db.table)."""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"clickhouse://{auth}{self.host}:{self.tcp_port}/{table}" + (
            f"?{query}" if query else ""
        )

    def client(self) -> Client:
        """A client as the ``default`` user (no password)."""
        return Client(self.host, self.tcp_port, connect_timeout=5, send_receive_timeout=30)

    def _write_config(self) -> Path:
        for name in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.xml"
        config.write_text(
            _CONFIG.format(dir=self.workdir, tcp_port=self.tcp_port, http_port=self.http_port)
        )
        extra = "".join(
            _USER.format(user=name, password=escape(password))
            for name, password in self.users.items()
        )
        (self.workdir / "users.xml").write_text(_USERS.format(extra_users=extra))
        return config

    def start(self) -> ClickHouseServer:
        if not os.path.exists(CLICKHOUSE_SERVER):
            raise RuntimeError(
                "clickhouse-server is missing: apt-get install clickhouse-server (make test does)"
            )
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "CLICKHOUSE"))}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [CLICKHOUSE_SERVER, f"--config-file={config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        try:
            wait_for(self._answers, 60, f"clickhouse-server (logs in {self.workdir / 'log'})")
        except RuntimeError:
            self.kill()
            raise
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"clickhouse-server exited; see {self.workdir / 'log'}")
        client = Client(self.host, self.tcp_port, connect_timeout=1, send_receive_timeout=2)
        try:
            return bool(client.execute("SELECT 1") == [(1,)])
        except Exception:
            return False
        finally:
            client.disconnect()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` as ``default``; its rows."""
        client = self.client()
        try:
            rows: list[tuple[Any, ...]] = client.execute(sql)
            return rows
        finally:
            client.disconnect()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """The server dies at once (SIGKILL), as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
