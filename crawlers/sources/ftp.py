"""Seed 003's FTP flow: list the files under ``remote_path`` and stream them down.

ftplib is blocking, so every call runs in a thread, serialised by a lock because
one control connection serves the whole task (FTP is one command at a time).
A transient failure drops the connection; the next call opens a new one. Every
path sent to the server is ``remote_path`` joined with a name that passed
:func:`safe_relative_path`, so a hostile listing cannot point us elsewhere.
"""

from __future__ import annotations

import asyncio
import codecs
import ftplib
import hashlib
import posixpath
import re
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from crawlers.models.fetch_task import FtpSourceConfig
from crawlers.sources.base import (
    FetchedFile,
    Listing,
    RemoteFile,
    SourceError,
    matches_pattern,
    safe_relative_path,
)

T = TypeVar("T")

_CHUNK = 256 * 1024
#: folders deeper than this are refused: a server can fake endless nesting
_MAX_DEPTH = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: `ls -l`: type+mode, links, owner, [group], size, month, day, time or year, name
_LS_LINE = re.compile(
    r"^([-dlbcps])\S{9}\S*\s+\d+\s+\S+\s+(?:\S+\s+)?(\d+)\s+"
    r"\w{3}\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4})\s(.+)$"
)
_KINDS = {"-": "file", "d": "dir", "l": "link"}

#: (name as the server sent it, "file" | "dir" | "link" | "other", size if known)
Entry = tuple[str, str, int | None]
Entries = list[Entry]  # (the class's `list` method hides the builtin there)


def _shown(text: str, limit: int = 200) -> str:
    """A server-supplied string made safe to log: control characters escaped."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."


def _mlsd_kind(fact: str) -> str:
    """An MLSD ``type`` fact as file/dir/link/other ("cdir", "pdir": this and parent)."""
    fact = fact.lower()
    if fact in ("file", "dir", "cdir", "pdir"):
        return fact
    return "link" if "slink" in fact or "symlink" in fact else "other"


def _invalid(problem: str) -> SourceError:
    return SourceError(f"FTP config: {problem}", transient=False)


def _extra_bool(extra: dict[str, object], *names: str, default: bool) -> bool:
    values = {extra[n] for n in names if extra.get(n) is not None}
    if any(not isinstance(v, bool) for v in values):
        raise _invalid(f"{'/'.join(names)} must be true or false")
    if len(values) > 1:
        raise _invalid(f"{' and '.join(names)} disagree")
    return bool(values.pop()) if values else default


class FtpSource:
    """One FTP fetch task's server (plain or explicit FTPS, passive by default).

    Extra config keys: ``port`` (21), ``tls``/``ftps`` (false), ``passive`` (true),
    ``tls_verify`` (true: the system's CAs, or ``SSL_CERT_FILE``), ``encoding`` of
    names (utf-8)."""

    def __init__(
        self, config: FtpSourceConfig, *, max_file_bytes: int, max_files: int, timeout: float = 30.0
    ) -> None:
        extra: dict[str, object] = dict(config.model_extra or {})
        port = extra.get("port", 21)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _invalid("port must be an integer from 1 to 65535")
        self._encoding = str(extra.get("encoding") or "utf-8")
        try:
            codecs.lookup(self._encoding)
        except LookupError:
            raise _invalid("unknown encoding") from None
        self._password = config.password.get_secret_value()
        fields = {"host": config.host, "username": config.username, "password": self._password}
        for name, value in {**fields, "remote_path": config.remote_path}.items():
            if _CONTROL.search(value):  # ftplib would send a CR LF: a second command
                raise _invalid(f"{name} holds control characters")
        self._host, self._port, self._username = config.host, port, config.username
        self._where = f"FTP {config.host}:{port}"
        self._remote_path, self._pattern = config.remote_path, config.file_pattern
        self._tls = _extra_bool(extra, "tls", "ftps", default=False)
        self._passive = _extra_bool(extra, "passive", default=True)
        self._context: ssl.SSLContext | None = None
        if self._tls:
            self._context = ssl.create_default_context()
            if not _extra_bool(extra, "tls_verify", default=True):
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._max_file_bytes, self._max_files, self._timeout = max_file_bytes, max_files, timeout
        self._lock = threading.Lock()
        self._ftp: ftplib.FTP | None = None
        self._base = ""  # the server's absolute name for remote_path (PWD after CWD)
        self._method = "MLSD"  # then LIST, then NLST, as the server turns them down

    # --- Source protocol

    async def list(self) -> Listing:
        return await asyncio.to_thread(self._locked, self._list)

    async def fetch(self, remote: RemoteFile, into: Path) -> FetchedFile:
        return await asyncio.to_thread(self._locked, lambda: self._fetch(remote, into))

    async def close(self) -> None:
        await asyncio.to_thread(self._locked, self._quit)

    # --- in the worker thread

    def _locked(self, call: Callable[[], T]) -> T:
        with self._lock:
            return call()

    def _error(self, what: str, exc: BaseException) -> SourceError:
        """A SourceError that names the host and the step, never the password."""
        transient = True
        if isinstance(exc, ftplib.error_perm | ssl.SSLCertVerificationError | UnicodeError):
            transient = False  # 5xx replies: wrong login, missing path, refused
        if isinstance(exc, ftplib.error_temp | ftplib.error_perm):
            detail = f"server replied {exc}"
        elif isinstance(exc, ssl.SSLCertVerificationError):  # (also a ValueError)
            detail = f"certificate not trusted: {exc.verify_message}"
        elif isinstance(exc, EOFError):
            detail = "the server closed the connection"
        elif isinstance(exc, TimeoutError):
            detail = f"no answer within {self._timeout:g} s"
        elif isinstance(exc, UnicodeError):
            detail = f"names are not {self._encoding} (set the 'encoding' option)"
        elif isinstance(exc, ftplib.error_reply | ftplib.error_proto):
            detail = f"unexpected reply: {exc}"  # out of step: a new connection may do
        elif isinstance(exc, ValueError):
            detail, transient = f"unexpected reply: {exc}", False
        else:
            detail = f"{type(exc).__name__}: {exc}"
        message = f"{self._where}: {what} failed: {_shown(detail, 300)}"
        if self._password:
            message = message.replace(self._password, "***")
        return SourceError(message, transient=transient)

    @contextmanager
    def _step(self, what: str) -> Iterator[None]:
        """Turn ftplib/socket errors into SourceErrors; drop the connection on
        transient ones, since its state is then unknown."""
        try:
            yield
        except SourceError:
            raise
        except (ftplib.Error, OSError, EOFError, ValueError) as exc:
            error = self._error(what, exc)
            if error.transient:
                self._drop()
            raise error from None  # the cause could quote the server's echo of a secret

    def _drop(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def _connected(self) -> ftplib.FTP:
        if self._ftp is not None:
            return self._ftp
        ftp = (
            ftplib.FTP_TLS(context=self._context, timeout=self._timeout)
            if self._tls
            else ftplib.FTP(timeout=self._timeout)
        )
        ftp.encoding = self._encoding
        try:
            with self._step("connect"):
                ftp.connect(self._host, self._port)
            if isinstance(ftp, ftplib.FTP_TLS):
                with self._step("TLS handshake (AUTH TLS)"):
                    ftp.auth()
            with self._step("log in"):
                ftp.login(self._username, self._password)
            if isinstance(ftp, ftplib.FTP_TLS):
                with self._step("securing the data channel (PROT P)"):
                    ftp.prot_p()
            ftp.set_pasv(self._passive)
            with self._step(f"opening remote_path {_shown(self._remote_path)!r}"):
                if self._remote_path:
                    ftp.cwd(self._remote_path)
                self._base = ftp.pwd()
        except BaseException:
            ftp.close()
            raise
        self._ftp = ftp
        return ftp

    def _quit(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            with suppress(ftplib.Error, OSError, EOFError):  # a goodbye, not a requirement
                if ftp.sock is not None:
                    ftp.sock.settimeout(min(self._timeout, 5.0))
                ftp.quit()
            ftp.close()

    def _list(self) -> Listing:
        ftp = self._connected()
        files: list[RemoteFile] = []
        refused: list[str] = []
        seen: set[str] = set()  # a server may list a name twice
        pending = [""]  # folders relative to remote_path, depth first
        while pending:
            folder = pending.pop()
            where = posixpath.join(self._base, folder) if folder else self._base
            try:
                with self._step(f"listing {_shown(where)!r}"):
                    entries = self._entries(ftp, where)
            except SourceError as exc:
                if not folder or exc.transient:
                    raise
                refused.append(f"{_shown(folder)}/: not listed ({exc})")
                continue
            for name, kind, size in sorted(entries, key=lambda entry: entry[0]):
                shown = _shown(f"{folder}/{name}" if folder else name)
                try:
                    safe_relative_path(name)
                    if "/" in name:
                        raise ValueError("is a path, not a name")
                    path = safe_relative_path(posixpath.join(folder, name))
                except ValueError as exc:
                    refused.append(f"{shown}: {exc}")
                    continue
                if kind == "dir":
                    if path.count("/") >= _MAX_DEPTH:
                        refused.append(f"{shown}: folders nested too deep")
                    else:
                        pending.append(path)
                elif kind == "link" and matches_pattern(self._pattern, path):
                    refused.append(f"{shown}: a symbolic link, not followed")
                elif kind == "file" and matches_pattern(self._pattern, path):
                    if size is not None and size > self._max_file_bytes:
                        refused.append(f"{shown}: {size} bytes, over {self._max_file_bytes}")
                    elif path not in seen:
                        seen.add(path)
                        files.append(RemoteFile(path, size, posixpath.join(self._base, path)))
                if len(files) > self._max_files:
                    raise SourceError(
                        f"{self._where}: more than {self._max_files} files"
                        f" match {_shown(self._pattern)!r} under {_shown(self._remote_path)!r}",
                        transient=False,
                    )
        return Listing(sorted(files, key=lambda f: f.path), refused)

    def _entries(self, ftp: ftplib.FTP, where: str) -> Entries:
        """One folder's entries, by the best listing command the server knows."""
        ftp.cwd(where)
        if self._method == "MLSD":
            try:
                found = list(ftp.mlsd())
            except ftplib.error_perm as exc:
                if str(exc)[:3] not in ("500", "502"):
                    raise
                self._method = "LIST"
            else:
                return [
                    (name, kind, int(size) if (size := facts.get("size", "")).isdigit() else None)
                    for name, facts in found
                    if (kind := _mlsd_kind(facts.get("type", ""))) not in ("cdir", "pdir")
                    and not (kind == "dir" and name in (".", ".."))
                ]
        if self._method == "LIST":
            lines: list[str] = []
            try:
                ftp.retrlines("LIST", lines.append)
            except ftplib.error_perm as exc:
                if str(exc)[:3] not in ("500", "502"):
                    raise
            else:
                parsed = _parse_ls(lines)
                if parsed is not None:
                    return parsed
            self._method = "NLST"  # LIST refused, or in a format we cannot read
        try:
            names = ftp.nlst()
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            if "no files" not in str(exc).lower():  # how some servers say "empty"
                raise
            names = []
        return self._probe(ftp, where, names)

    def _probe(self, ftp: ftplib.FTP, where: str, names: Sequence[str]) -> Entries:
        """NLST gives bare names: a folder is what CWD accepts; SIZE sizes a file.
        Unsafe names are not sent to the server at all."""
        ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode by many servers
        entries: Entries = []
        for name in names:
            name = posixpath.basename(name) if name.startswith(where + "/") else name
            if name in (".", ".."):
                continue
            try:
                safe_relative_path(name)
            except ValueError:
                entries.append((name, "other", None))  # refused by the caller
                continue
            target = posixpath.join(where, name)
            try:
                ftp.cwd(target)
                entries.append((name, "dir", None))
                continue
            except ftplib.error_perm:
                pass
            try:
                entries.append((name, "file", ftp.size(target)))
            except (ftplib.error_perm, ValueError):
                entries.append((name, "file", None))
        return entries

    def _fetch(self, remote: RemoteFile, into: Path) -> FetchedFile:
        # the path, never the locator, decides what is fetched: it was checked
        try:
            path = safe_relative_path(remote.path)
        except ValueError as exc:
            message = f"{self._where}: refused to fetch {_shown(remote.path)!r}: {exc}"
            raise SourceError(message, transient=False) from None
        too_big = SourceError(
            f"{self._where}: {_shown(path)!r} is over the {self._max_file_bytes} byte limit",
            transient=False,
        )
        if remote.size is not None and remote.size > self._max_file_bytes:
            raise too_big
        ftp = self._connected()
        digest = hashlib.sha256()
        size = 0
        out = into.open("wb")

        def write(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > self._max_file_bytes:
                raise too_big
            digest.update(chunk)
            out.write(chunk)

        try:
            with out, self._step(f"downloading {_shown(path)!r}"):
                ftp.retrbinary(f"RETR {posixpath.join(self._base, path)}", write, _CHUNK)
        except BaseException as exc:
            into.unlink(missing_ok=True)
            if size or not (isinstance(exc, SourceError) and not exc.transient):
                self._drop()  # a transfer cut short leaves the control channel out of step
            raise
        return FetchedFile(remote, into, digest.hexdigest(), size)


def _parse_ls(lines: list[str]) -> list[Entry] | None:
    """Entries of a Unix ``ls -l`` listing, or None if a line is in another format."""
    entries: list[Entry] = []
    for line in lines:
        if not line.strip() or line.startswith("total "):
            continue
        match = _LS_LINE.match(line)
        if match is None:
            return None
        kind, size, name = match.groups()
        if kind == "l":
            name = name.split(" -> ", 1)[0]
        if name not in (".", ".."):
            entries.append((name, _KINDS.get(kind, "other"), int(size)))
    return entries
