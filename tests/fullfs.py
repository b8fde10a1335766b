"""A really full filesystem for end-to-end tests, and workers whose logs a test can watch.

Two ways to make a worker's writes fail the way a full disk does, both enforced
by the kernel (nothing is mocked):

- ``tmpfs``: a small tmpfs mounted on the test's directory and filled with a
  filler file up to ``room`` free bytes; writes beyond fail with ``ENOSPC``.
  Deleting the filler gives the space back. Needs ``mount`` (root or
  CAP_SYS_ADMIN), so it is tried first and skipped in favour of:
- ``rlimit``: the worker runs with a soft ``RLIMIT_FSIZE`` of ``room`` bytes
  (Python ignores SIGXFSZ, so a write past it fails with ``EFBIG``). The limit
  holds for *every* regular file the worker writes, so its log goes through a
  pipe and its summary must stay below ``room``. Raising the soft limit of the
  running worker with ``prlimit(2)`` (same user, up to the unlimited hard
  limit: no privilege needed) gives the space back.

``FULL_DISK_VARIANTS=tmpfs,rlimit`` (or ``auto``, the default: tmpfs when
mountable, else rlimit) chooses which variants the tests are collected with.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, scrapy_command

TMPFS = "tmpfs"
RLIMIT = "rlimit"
VARIANTS_ENV = "FULL_DISK_VARIANTS"
_PAGE = 4096


@functools.cache
def tmpfs_mountable() -> bool:
    """Whether this process may mount a tmpfs (tried, then undone)."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="fullfs-probe-") as directory:
        try:
            probe = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", directory],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        if probe.returncode != 0:
            return False
        _unmount(Path(directory))
    return True


def variants() -> list[str]:
    """The variants to collect: ``FULL_DISK_VARIANTS``, else the best one available."""
    wanted = os.environ.get(VARIANTS_ENV, "auto").replace(" ", "")
    if wanted in ("", "auto"):
        return [TMPFS if tmpfs_mountable() else RLIMIT]
    chosen = wanted.split(",")
    unknown = set(chosen) - {TMPFS, RLIMIT}
    if unknown:
        raise ValueError(f"{VARIANTS_ENV}: unknown variants {sorted(unknown)}")
    return chosen


@dataclass
class FullDisk:
    """A directory a limited worker can write only ``room`` more bytes into."""

    variant: str
    directory: Path
    room: int
    _filler: Path | None = None

    def preexec_fn(self) -> Callable[[], None] | None:
        """For ``subprocess.Popen``: what limits a worker (``None``: the filesystem does)."""
        if self.variant != RLIMIT:
            return None
        room = self.room

        def limit_file_size() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))

        return limit_file_size

    def release(self, pid: int) -> None:
        """Give the space back, to the running worker ``pid`` as well."""
        if self.variant == TMPFS:
            assert self._filler is not None
            self._filler.unlink()
        else:
            unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)


@contextlib.contextmanager
def full_disk(variant: str, workdir: Path, *, room: int, capacity: int) -> Iterator[FullDisk]:
    """``workdir/full``, with ``room`` bytes left; a tmpfs of ``capacity`` is unmounted on exit."""
    directory = workdir / "full"
    directory.mkdir()
    if variant == RLIMIT:
        yield FullDisk(variant, directory, room)
        return
    if room % _PAGE or capacity % _PAGE:
        raise ValueError("tmpfs sizes are counted in pages: use multiples of 4096")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={capacity},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        timeout=10,
        check=True,
    )
    try:
        filler = directory / "filler"
        _write_zeros(filler, capacity - room)
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        assert free == room, f"the tmpfs has {free} bytes free, not {room}"
        yield FullDisk(variant, directory, room, filler)
    finally:
        _unmount(directory)


def _write_zeros(path: Path, size: int) -> None:
    block = bytes(64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        left = size
        while left:
            left -= os.write(fd, block[: min(left, len(block))])
        os.fsync(fd)
    finally:
        os.close(fd)


def _unmount(directory: Path) -> None:
    done = subprocess.run(["umount", str(directory)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        # something still has a file open there: detach it now, and say so
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)
        raise RuntimeError(f"umount {directory}: {done.stderr.decode(errors='replace')}")


@dataclass
class Worker:
    """A ``scrapy crawl prices`` process; its log (stdout and stderr) is drained by a
    thread into memory and ``log_path`` (a pipe: RLIMIT_FSIZE does not apply to it)."""

    name: str
    log_path: Path
    env: dict[str, str]
    preexec_fn: Callable[[], None] | None = None
    process: subprocess.Popen[bytes] = field(init=False)
    _lines: list[str] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _drain: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            scrapy_command(),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,  # only setrlimit, between fork and exec
        )
        self._drain = threading.Thread(target=self._read_log, name=f"log-{self.name}")
        self._drain.start()

    def _read_log(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        with stream, self.log_path.open("wb") as log:
            for raw in stream:
                log.write(raw)
                log.flush()
                with self._lock:
                    self._lines.append(raw.decode("utf-8", "replace"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def count(self, text: str) -> int:
        """Log lines containing ``text``."""
        with self._lock:
            return sum(text in line for line in self._lines)

    def tail(self, chars: int = 5000) -> str:
        return f"--- log of worker {self.name} (tail) ---\n{self.log()[-chars:]}"

    def wait_until(self, check: Callable[[], object], what: str, timeout: float = 30) -> None:
        """Poll ``check`` while the worker runs; fail with its log tail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None:
                code = self.process.returncode
                pytest.fail(f"worker {self.name} exited ({code}) before {what}\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.name}: no {what} within {timeout:g} s\n{self.tail()}")
            time.sleep(0.05)

    def wait_for_log(self, text: str, times: int = 1, timeout: float = 30) -> None:
        self.wait_until(lambda: self.count(text) >= times, f"{times}x {text!r} in its log", timeout)

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C: Scrapy's graceful shutdown."""
        self.process.send_signal(signal.SIGINT)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker {self.name} still running after {timeout:g} s\n{self.tail()}")
        self._drain.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._drain.join(10)
