"""Record a site in headless Chromium: the HAR and screenshots a fetcher is generated from.

:func:`explore` drives a page the way a person would (log in, apply the task's
navigation, page through "next"/"load more") and keeps each page state's visible
text, against which the analysis matches API responses. :func:`capture` runs it
in a recording context and redacts the login credentials from the HAR before
anything else reads it: the HAR is kept with the job, so it must never hold them.

Network idleness after a click is tracked here (:class:`_NetworkMonitor`), not
with ``wait_for_load_state("networkidle")``: that fires once per navigation and
returns at once for the XHRs a click triggers on a single-page app.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Request,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from crawlers.models.fetch_task import LoginCredentials

__all__ = [
    "CHROMIUM_ARGS",
    "CHROMIUM_PATH",
    "CaptureError",
    "Exploration",
    "LoginError",
    "capture",
    "explore",
    "recording_context",
    "redact_har",
    "redact_text",
]

logger = logging.getLogger(__name__)

#: Debian's chromium: ``playwright install`` cannot download browsers here
CHROMIUM_PATH = "/usr/bin/chromium"
#: the launch options that work in this environment (STACK-NOTES "Headless browser")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
MASK = "***"
HAR_NAME = "capture.har"

#: the text of a control that pages forward: Next, Next page, More, Load more, \u203a or \u00bb
_NEXT_TEXT = re.compile(
    r"^\s*(?:next(?:\s+page)?|(?:load|show)?\s*more|[\u203a\u00bb])\s*[\u203a\u00bb>\u2192]?\s*$",
    re.IGNORECASE,
)
#: roles a navigation value (a filter, a date range) may be clicked as
_NAVIGATION_ROLES = ("button", "link", "tab", "checkbox", "radio", "menuitem", "option")
_USERNAME_INPUTS = (
    "input[autocomplete=username]",
    "input[type=email]",
    "input[name*=user i]",
    "input[name*=email i]",
    "input[name*=login i]",
    "input[type=text]",
    "input:not([type])",
)
_SUBMIT = "button[type=submit], input[type=submit], button:not([type])"


class CaptureError(RuntimeError):
    """The site could not be explored; the message never holds credentials."""


class LoginError(CaptureError):
    """Credentials were given but the login form was still shown after submitting them."""


@dataclass
class Exploration:
    """What the browser saw: one entry in ``page_texts`` and ``screenshots`` per page state."""

    final_url: str
    page_texts: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    pages_visited: int = 0
    login_used: bool = False
    #: the navigation values (filters, date range) that matched a control and were applied
    navigation_applied: list[str] = field(default_factory=list)


class _NetworkMonitor:
    """Counts the page's in-flight requests, to wait until a click's XHRs have settled."""

    def __init__(self, page: Page) -> None:
        self._in_flight: set[Request] = set()
        self._last_activity = time.monotonic()
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request: Request) -> None:
        self._in_flight.add(request)
        self._last_activity = time.monotonic()

    def _ended(self, request: Request) -> None:
        self._in_flight.discard(request)
        self._last_activity = time.monotonic()

    async def settle(self, since: float, *, quiet_ms: int, timeout_ms: int) -> None:
        """Return once nothing is in flight and nothing happened for ``quiet_ms`` after
        ``since`` (an action's start, so requests it triggers a little later still count).
        A page that never goes quiet (polling, long-poll) is given up on after the timeout."""
        quiet = quiet_ms / 1000
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic()
            if not self._in_flight and now - max(self._last_activity, since) >= quiet:
                return
            if now >= deadline:
                logger.info("network not idle after %d ms, going on", timeout_ms)
                return
            await asyncio.sleep(0.05)


async def recording_context(
    browser: Browser, har_path: Path, *, ignore_https_errors: bool = False
) -> BrowserContext:
    """A context that records every request with its body into ``har_path`` when closed.

    Service workers are blocked so that no request escapes the recording.
    """
    har_path.parent.mkdir(parents=True, exist_ok=True)
    return await browser.new_context(
        record_har_path=har_path,
        record_har_content="embed",
        record_har_mode="full",
        service_workers="block",
        ignore_https_errors=ignore_https_errors,
        viewport={"width": 1280, "height": 900},
    )


async def explore(
    page: Page,
    url: str,
    *,
    login: LoginCredentials | None,
    navigation: Mapping[str, Any],
    screenshots_dir: Path,
    max_pages: int = 20,
    timeout_ms: int = 15000,
    quiet_ms: int = 500,
) -> Exploration:
    """Open ``url``, log in if a password form shows and ``login`` is given, apply the
    navigation, then record each page state and follow "next" (or lazy loading on
    scroll) while it changes the page, up to ``max_pages`` states.

    ``navigation`` is applied best effort: each of ``filters`` (a string or a list)
    and ``date_range`` (e.g. ``"7_days"``, also tried as "7 days") is clicked as the
    first visible button/link/tab/checkbox/radio/option whose name holds it as a
    word, or selected in a ``<select>`` offering it. A value no control matches is
    skipped silently (logged); it is not an error, since sites differ in what they
    offer. Other keys are ignored.
    """
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")
    page.set_default_timeout(timeout_ms)
    monitor = _NetworkMonitor(page)
    screenshots_dir.mkdir(parents=True, exist_ok=True)

    async def settle(since: float) -> None:
        try:
            await page.wait_for_load_state("load", timeout=timeout_ms)
        except PlaywrightError:
            logger.info("page did not finish loading in %d ms, going on", timeout_ms)
        await monitor.settle(since, quiet_ms=quiet_ms, timeout_ms=timeout_ms)

    # network idle, as Playwright's "networkidle", but a page that polls is no error
    started = time.monotonic()
    await page.goto(url, wait_until="load", timeout=timeout_ms)
    await settle(started)

    exploration = Exploration(final_url=page.url)
    password = page.locator("input[type=password]").first
    if login is not None and await _visible(password):
        await _log_in(page, login, password)
        await settle(time.monotonic())
        if await _visible(page.locator("input[type=password]").first):
            raise LoginError(f"the login form at {page.url} is still shown after submitting")
        exploration.login_used = True
    for value in _navigation_values(navigation):
        started = time.monotonic()
        if await _apply_navigation_value(page, value):
            exploration.navigation_applied.append(value)
            await settle(started)
        else:
            logger.info("no control for navigation value %r, skipped", value)

    text = await page.inner_text("body")
    seen = {text}
    while True:
        number = len(exploration.page_texts) + 1
        shot = screenshots_dir / f"page-{number:03d}.png"
        await page.screenshot(path=shot, full_page=True)
        exploration.page_texts.append(text)
        exploration.screenshots.append(shot)
        if number >= max_pages:
            break
        new_text = await _scroll_for_more(page, settle)
        if new_text == text:
            control = await _next_control(page)
            if control is None:
                break
            started = time.monotonic()
            await control.click()
            await settle(started)
            new_text = await page.inner_text("body")
        if new_text in seen:  # "next" did nothing, or the pages go round in a circle
            break
        seen.add(new_text)
        text = new_text
    exploration.pages_visited = len(exploration.page_texts)
    exploration.final_url = page.url
    return exploration


async def _visible(locator: Locator) -> bool:
    try:
        return await locator.count() > 0 and await locator.is_visible()
    except PlaywrightError:
        return False


async def _first_usable(locators: Iterable[Locator]) -> Locator | None:
    """The first visible, enabled element, not marked disabled by ARIA or a class."""
    for locator in locators:
        for element in await locator.all():
            try:
                if not (await element.is_visible() and await element.is_enabled()):
                    continue
                disabled = await element.evaluate(
                    "e => e.getAttribute('aria-disabled') === 'true'"
                    " || e.classList.contains('disabled')"
                )
            except PlaywrightError:  # detached meanwhile
                continue
            if not disabled:
                return element
    return None


async def _log_in(page: Page, login: LoginCredentials, password: Locator) -> None:
    """Fill the form that holds the password field; Enter submits when no button does."""
    form = page.locator("form").filter(has=page.locator("input[type=password]")).first
    scope: Page | Locator = form if await form.count() else page
    if login.username:
        username = await _first_usable(scope.locator(selector) for selector in _USERNAME_INPUTS)
        if username is None:
            raise LoginError(f"no username field in the login form at {page.url}")
        await username.fill(login.username)
    await password.fill(login.password.get_secret_value())
    submit = await _first_usable([scope.locator(_SUBMIT)])
    if submit is not None:
        await submit.click()
    else:
        await password.press("Enter")


def _navigation_values(navigation: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for key in ("date_range", "filters"):
        raw = navigation.get(key)
        items = [raw] if isinstance(raw, str | int) else raw if isinstance(raw, list) else []
        values += [str(item) for item in items if isinstance(item, str | int) and str(item)]
    return values


async def _apply_navigation_value(page: Page, value: str) -> bool:
    variants = list(dict.fromkeys([value, re.sub(r"[_-]+", " ", value)]))
    for variant in variants:
        pattern = re.compile(rf"(?<!\w){re.escape(variant)}(?!\w)", re.IGNORECASE)
        for select in await page.locator("select").all():
            options: list[dict[str, str]] = await select.evaluate(
                "s => [...s.options].map(o => ({value: o.value, label: o.label}))"
            )
            for option in options:
                if pattern.search(option["label"]) or pattern.search(option["value"]):
                    await select.select_option(value=option["value"])
                    return True
        control = await _first_usable(
            page.get_by_role(role, name=pattern)  # type: ignore[arg-type]
            for role in _NAVIGATION_ROLES
        )
        if control is not None:
            await control.click()
            return True
    return False


async def _next_control(page: Page) -> Locator | None:
    return await _first_usable(
        [
            page.locator("[rel=next]"),
            page.get_by_role("button", name=_NEXT_TEXT),
            page.get_by_role("link", name=_NEXT_TEXT),
        ]
    )


async def _scroll_for_more(page: Page, settle: Callable[[float], Awaitable[None]]) -> str:
    """Scroll to the bottom and return the body text, which lazy loading may have grown.

    A page that does not scroll (it fits, or is at the bottom already) loads nothing
    new, so it is not waited on."""
    started = time.monotonic()
    moved = await page.evaluate(
        "() => { const y = window.scrollY;"
        " window.scrollTo(0, document.documentElement.scrollHeight);"
        " return window.scrollY !== y; }"
    )
    if moved:
        await settle(started)
    return await page.inner_text("body")


async def capture(
    url: str,
    *,
    login: LoginCredentials | None,
    navigation: Mapping[str, Any],
    out_dir: Path,
    executable_path: str = CHROMIUM_PATH,
    max_pages: int = 20,
    timeout_ms: int = 15000,
    ignore_https_errors: bool = False,
) -> tuple[Path, Exploration]:
    """Launch Chromium, record ``out_dir/capture.har`` (and ``out_dir/screenshots/``)
    while exploring ``url``, and return the HAR's path with what was seen.

    The HAR is written when the context closes, and is redacted right after, even
    when exploring failed: the credentials are masked in it and in ``page_texts``.
    Screenshots are taken only after logging in; they are not redacted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    har_path = out_dir / HAR_NAME
    secrets = _credential_values(login)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable_path, headless=True, args=list(CHROMIUM_ARGS)
            )
            try:
                context = await recording_context(
                    browser, har_path, ignore_https_errors=ignore_https_errors
                )
                try:
                    page = await context.new_page()
                    exploration = await explore(
                        page,
                        url,
                        login=login,
                        navigation=navigation,
                        screenshots_dir=out_dir / "screenshots",
                        max_pages=max_pages,
                        timeout_ms=timeout_ms,
                    )
                finally:
                    await context.close()
            finally:
                await browser.close()
    finally:
        if secrets and har_path.exists():
            redact_har(har_path, secrets)
    texts = [redact_text(text, secrets) for text in exploration.page_texts]
    return har_path, replace(exploration, page_texts=texts)


def _credential_values(login: LoginCredentials | None) -> list[str]:
    if login is None:
        return []
    values = [login.username, login.password.get_secret_value()]
    return [value for value in values if value]


# --- redaction ---------------------------------------------------------------------

_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f"}
_JSON_ESCAPES |= {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HTML_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}


def _any_case_hex(digits: str) -> str:
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in digits)


def _secret_pattern(secret: str) -> re.Pattern[str]:
    """Each character of ``secret`` as itself or in any encoding it may be stored in:
    percent-encoded (``%xx`` either case, ``+`` for a space: query strings and form
    bodies), a JSON escape (a JSON body kept as text inside the HAR's JSON) or an
    HTML character reference (a page echoing it). Mixed forms match too, as a browser
    percent-encodes only some characters."""
    parts = []
    for char in secret:
        code = ord(char)
        # encodings first: "%" must match "%25" whole, not leave "25" behind
        forms = ["".join("%" + _any_case_hex(f"{byte:02x}") for byte in char.encode())]
        if char == " ":
            forms.append(r"\+")
        units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10)]
        if code >= 0x10000:
            units.append(0xDC00 + ((code - 0x10000) & 0x3FF))
        forms.append("".join(r"\\u" + _any_case_hex(f"{unit:04x}") for unit in units))
        if char in _JSON_ESCAPES:
            forms.append(re.escape(_JSON_ESCAPES[char]))
        forms.append(f"&#0*{code};")
        forms.append("&#[xX]0*" + _any_case_hex(f"{code:x}") + ";")
        if char in _HTML_NAMED:
            forms.append(re.escape(_HTML_NAMED[char]))
        forms.append(re.escape(char))
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(parts))


def _ordered(secrets: Iterable[str]) -> list[str]:
    # longest first, so a secret holding another is masked whole
    return sorted({secret for secret in secrets if secret}, key=len, reverse=True)


def _mask(text: str, patterns: list[re.Pattern[str]]) -> tuple[str, int]:
    total = 0
    for pattern in patterns:
        text, count = pattern.subn(MASK, text)
        total += count
    return text, total


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret, in any of its encodings, replaced by ``***``."""
    return _mask(text, [_secret_pattern(secret) for secret in _ordered(secrets)])[0]


def redact_har(path: Path, secrets: Iterable[str]) -> int:
    """Mask every secret in the HAR at ``path`` in place; returns how many were masked.

    The HAR is parsed rather than edited as text, so masking never breaks its JSON,
    however short a secret; every string is masked in every encoding
    (:func:`_secret_pattern`), and base64 bodies (``content.encoding``) are decoded
    first. The file is replaced atomically, so no reader sees it half-written.
    """
    ordered = _ordered(secrets)
    if not ordered:
        return 0
    patterns = [_secret_pattern(secret) for secret in ordered]
    # a binary body is masked through latin-1, which keeps every byte: the secret's
    # ASCII encodings as they are, its literal UTF-8 bytes as latin-1 characters
    binary = patterns + [
        re.compile(re.escape(secret.encode("utf-8").decode("latin-1"))) for secret in ordered
    ]
    har = json.loads(path.read_text(encoding="utf-8"))
    masked = [0]

    def mask(text: str) -> str:
        text, count = _mask(text, patterns)
        masked[0] += count
        return text

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return mask(value)
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        result = {mask(key): walk(item) for key, item in value.items()}
        if value.get("encoding") == "base64" and isinstance(value.get("text"), str):
            result["text"] = _mask_base64(value["text"], patterns, binary, masked)
        return result

    redacted = walk(har)
    if masked[0]:
        temporary = path.with_name(path.name + ".redacting")
        temporary.write_text(json.dumps(redacted, ensure_ascii=False, indent=2), encoding="utf-8")
        os.replace(temporary, path)
    return masked[0]


def _mask_base64(
    encoded: str,
    patterns: list[re.Pattern[str]],
    binary: list[re.Pattern[str]],
    masked: list[int],
) -> str:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        text, count = _mask(encoded, patterns)  # not base64 after all: mask it as text
        masked[0] += count
        return text
    try:
        text, count = _mask(raw.decode("utf-8"), patterns)
        data = text.encode("utf-8")
    except UnicodeDecodeError:
        text, count = _mask(raw.decode("latin-1"), binary)
        data = text.encode("latin-1")
    masked[0] += count
    return base64.b64encode(data).decode() if count else encoded
