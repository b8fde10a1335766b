"""Console sign-in: an API key once, then a signed session cookie; CSRF tokens on every change.

The cookie (``hydra_console``) is HttpOnly and SameSite=Strict, signed with
``HYDRA_CONSOLE_SECRET`` (itsdangerous) and holds the role, a fingerprint of
the key (never the key) and the session's CSRF token. Every request checks the
fingerprint against the keys configured now, so removing a key ends its
sessions. A state-changing request must carry the CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``) and, when the browser sends one, an
``Origin`` of this host; a reader's session may change nothing, whatever it sends.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from crawlers.config import HydraConfig

COOKIE = "hydra_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
Role = Literal["operator", "reader"]


@dataclass(frozen=True)
class Session:
    role: Role
    key_id: str
    csrf: str

    @property
    def can_change(self) -> bool:
        return self.role == "operator"


class SignInRequired(Exception):
    """Raised by page dependencies; the app answers with a redirect to the sign-in page."""


def fingerprint(key: str) -> str:
    """A short digest that names a key in the cookie and in change history (shown to
    read-only keys): slow (PBKDF2, computed once per key at start), so that nobody can
    guess an operator key offline from it."""
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), b"hydra-console-key-id", 100_000)
    return digest.hex()[:16]


class ConsoleAuth:
    def __init__(self, config: HydraConfig) -> None:
        secret = config.console_secret or secrets.token_urlsafe(32)
        self.serializer = URLSafeTimedSerializer(secret, salt="hydra-console-session")
        self.max_age = int(config.console_session_hours * 3600)
        self.operators = {fingerprint(key): key.encode() for key in config.api_keys}
        self.readers = {fingerprint(key): key.encode() for key in config.readonly_api_keys}

    def sign_in(self, given: str) -> Session | None:
        """The session for one of the configured keys (compared in constant time), else None."""
        raw = given.strip().encode()
        if not raw:
            return None
        for role, keys in (("operator", self.operators), ("reader", self.readers)):
            for key_id, key in keys.items():
                if hmac.compare_digest(raw, key):
                    return Session(role, key_id, secrets.token_urlsafe(24))  # type: ignore[arg-type]
        return None

    def cookie(self, session: Session) -> str:
        return self.serializer.dumps({"r": session.role, "k": session.key_id, "c": session.csrf})

    def session(self, request: Request) -> Session | None:
        """The request's session; None for no cookie, a forged or expired one, a removed key."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            data = self.serializer.loads(token, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        role, key_id, csrf = data.get("r"), data.get("k"), data.get("c")
        keys = self.operators if role == "operator" else self.readers if role == "reader" else {}
        if not isinstance(key_id, str) or key_id not in keys or not isinstance(csrf, str):
            return None
        return Session(role, key_id, csrf)  # type: ignore[arg-type]

    async def viewer(self, request: Request) -> Session:
        """A page dependency: any signed-in key."""
        session = self.session(request)
        if session is None:
            raise SignInRequired
        return session

    async def changer(self, request: Request) -> Session:
        """A state-changing request's dependency: an operator's session, a matching CSRF
        token and, if the browser names one, this site as the origin."""
        session = self.session(request)
        if session is None:
            raise HTTPException(status_code=401, detail="sign in first")
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
            # the host only: behind a TLS-terminating proxy the app sees http, the browser https
            raise HTTPException(status_code=403, detail="cross-site request refused")
        given = request.headers.get(CSRF_HEADER, "")
        if not given and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else ""
        if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
        if not session.can_change:
            raise HTTPException(status_code=403, detail="a read-only key may not change anything")
        return session


def served_over_https(request: Request) -> bool:
    """Directly, or behind a proxy that says so (``X-Forwarded-Proto``): the cookie is Secure."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class SignInLimiter:
    """At most ``attempts`` failed sign-ins per client address in ``window`` seconds (in
    memory, per process): key guessing through the form is slowed to a crawl."""

    def __init__(self, attempts: int = 10, window: float = 60.0) -> None:
        self.attempts, self.window = attempts, window
        self._failures: dict[str, list[float]] = {}

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < self.window]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return len(recent) >= self.attempts

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # many addresses: forget the oldest
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, []).append(time.monotonic())


async def _viewer(request: Request) -> Session:
    auth: ConsoleAuth = request.app.state.console.auth
    return await auth.viewer(request)


async def _changer(request: Request) -> Session:
    auth: ConsoleAuth = request.app.state.console.auth
    return await auth.changer(request)


#: a page's parameter: the signed-in session (any key), else a redirect to sign in
Viewer = Annotated[Session, Depends(_viewer)]
#: a change's parameter: an operator's session with the right CSRF token, else 401/403
Changer = Annotated[Session, Depends(_changer)]
