"""A private clickhouse-server (Debian's 18.16) on free loopback ports: for the demo.

The package does not start a server; it runs here as a plain process from a
``<yandex>`` config in its own directory (data, tmp, logs), native protocol on
``tcp_port`` and HTTP (its health check) on ``http_port``.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

from crawlers.sandbox.redis_server import wait_for
from crawlers.sandbox.server import _free_port as free_port

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/error.log</errorlog>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <mark_cache_size>67108864</mark_cache_size>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
</yandex>
"""

USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""


def server_binary() -> str:
    found = shutil.which("clickhouse-server") or (
        "/usr/sbin/clickhouse-server" if Path("/usr/sbin/clickhouse-server").exists() else None
    )
    if found is None:
        raise RuntimeError("clickhouse-server is not installed: `make demo` installs it")
    return found


class ClickHouseServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, table: str) -> str:
        """A ``clickhouse://`` sink URI for ``table`` (``db.table``) on this server."""
        return f"clickhouse://127.0.0.1:{self.tcp_port}/{table}"

    def start(self) -> ClickHouseServer:
        for name in ("data", "tmp", "log", "user_files", "format_schemas"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.xml"
        config.write_text(
            CONFIG.format(dir=self.workdir, tcp_port=self.tcp_port, http_port=self.http_port)
        )
        (self.workdir / "users.xml").write_text(USERS)
        self.process = subprocess.Popen(
            [server_binary(), f"--config-file={config}"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(self._healthy, 30, "clickhouse-server")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"clickhouse-server exited; see {self.workdir}/log/error.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=2) as r:
            return bool(r.status == 200)

    def query(self, sql: str) -> str:
        """Run ``sql`` over HTTP; its text answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/", data=sql.encode("utf-8")
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(answer.read().decode("utf-8"))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
