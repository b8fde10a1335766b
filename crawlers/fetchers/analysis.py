"""Find what a fetcher must do in a browser capture: the JSON API that carries the data
the page showed, or failing that the repeated structure of the server-rendered HTML.

No LLM and no guessing from names alone: a response is the data only if the values of
its objects are visible in the page; every parametrised part (token, key, page number,
cursor, next link) is traced to where its value came from. The rules are in the
docstrings of :func:`find_api` and :func:`find_dom`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any, Literal
from urllib.parse import parse_qsl, urljoin, urlsplit

from parsel import Selector
from pydantic import SecretStr

from crawlers.fetchers.recipes import (
    ApiRecipe,
    Auth,
    DomRecipe,
    FieldSelector,
    JsonPath,
    Pagination,
    TokenSource,
    value_at,
)

log = logging.getLogger(__name__)

#: share of a list's objects that must show a value in the page for the list to be data
MIN_SHOWN_SHARE = 0.5
#: a repeated element needs this many siblings to be a list of items
MIN_SIBLINGS = 3
#: the keys that name an item, in order of preference
ID_FIELDS = ("id", "sku", "code", "uuid")

AuthKeys = Mapping[str, "str | SecretStr | None"]

_NOISE_WORDS = frozenset(
    {"analytics", "collect", "beacon", "pixel", "gtm", "track", "tracking", "telemetry"}
)
_NOISE_HOSTS = (
    "google-analytics.",
    "googletagmanager.",
    "doubleclick.",
    "hotjar.",
    "segment.io",
    "sentry.io",
    "mixpanel.",
    "facebook.",
)
_STATIC_EXTENSIONS = frozenset(
    {"css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "webp", "svg", "ico"}
    | {"woff", "woff2", "ttf", "otf", "eot"}
)
#: headers that carry a credential by name (har-to-openapi's list)
_AUTH_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-token",
        "token",
        "x-csrf-token",
        "x-xsrf-token",
    }
)
#: headers a browser sets per request or per session: never replayed
_VOLATILE_HEADERS = frozenset(
    {
        "cookie",
        "user-agent",
        "accept-encoding",
        "content-length",
        "referer",
        "origin",
        "host",
        "connection",
        "if-none-match",
        "if-modified-since",
        "cache-control",
        "pragma",
        "priority",
        "te",
        "dnt",
        "upgrade-insecure-requests",
    }
)
#: a captured value this long that an earlier response supplied is a credential
_TRACED_MIN_LENGTH = 16
_SCHEME = re.compile(r"^(Bearer|Token|JWT)\s+(\S+)$", re.IGNORECASE)
#: a value that looks generated: 16+ characters of a token alphabet with a digit
_TOKEN_LIKE = re.compile(rf"^(?=.*\d)[A-Za-z0-9._~+/=-]{{{_TRACED_MIN_LENGTH},}}$")

# pagination vocabulary, compared after lower-casing and dropping "_" and "-"
_PAGE_PARAMS = frozenset({"page", "p", "pg", "pagenumber", "pageno", "pagenum", "pageindex"})
_OFFSET_PARAMS = frozenset({"offset", "skip", "start", "from"})
_SIZE_PARAMS = frozenset(
    {"perpage", "limit", "size", "pagesize", "count", "rows", "take", "pagelen", "maxresults"}
)
_CURSOR_PARAMS = frozenset({"cursor", "after", "pagetoken", "continuation", "token", "next"})
_CURSOR_KEYS = frozenset(
    {"nextcursor", "cursor", "nextpagetoken", "endcursor", "nexttoken", "continuation"}
)
#: keys of a next-page URL; ``href`` only under a ``next`` key (HAL's ``_links.next.href``)
_NEXT_KEYS = frozenset({"next", "nexturl", "nextlink", "nextpageurl", "nextpage", "href"})
_TOTAL_PAGES_KEYS = frozenset(
    {"totalpages", "pages", "lastpage", "pagecount", "numpages", "pagestotal"}
)


class NoDataFound(Exception):
    """Neither a data API nor a repeated HTML structure was found; ``reasons`` says why
    for each place looked at, for the person who reviews the capture."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons) or ["nothing in the capture looked like data"]
        super().__init__("; ".join(self.reasons))


# --- the capture ---------------------------------------------------------------------


_NOT_JSON: Any = object()


@dataclass(frozen=True)
class _Exchange:
    """One HAR entry, decoded once."""

    index: int
    method: str
    url: str
    endpoint: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: str | None
    status: int
    mime: str
    text: str
    data: Any

    @property
    def is_json(self) -> bool:
        return self.data is not _NOT_JSON

    def param(self, name: str) -> str | None:
        values = [value for key, value in self.query if key == name]
        return values[-1] if values else None

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[-1] if values else None


def _endpoint(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path or '/'}"


def _response_text(content: Mapping[str, Any]) -> str:
    text = content.get("text") or ""
    if not isinstance(text, str):
        return ""
    if content.get("encoding") == "base64":
        try:
            return base64.b64decode(text).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return ""
    return text


def _exchanges(har: Mapping[str, Any]) -> list[_Exchange]:
    """The HAR's entries in the order they were sent (``startedDateTime`` when given)."""
    raw = har.get("log", {}).get("entries", [])
    entries = [entry for entry in raw if isinstance(entry, dict)]
    entries.sort(key=lambda entry: str(entry.get("startedDateTime", "")))
    out: list[_Exchange] = []
    for entry in entries:
        request = entry.get("request") or {}
        response = entry.get("response") or {}
        url = str(request.get("url", ""))
        if not url.startswith(("http://", "https://")):
            continue
        content = response.get("content") or {}
        mime = str(content.get("mimeType", "")).lower()
        text = _response_text(content)
        data: Any = _NOT_JSON
        if "json" in mime and text:
            try:
                data = json.loads(text)
            except ValueError:
                data = _NOT_JSON
        post = request.get("postData") or {}
        out.append(
            _Exchange(
                index=len(out),
                method=str(request.get("method", "GET")).upper(),
                url=url,
                endpoint=_endpoint(url),
                query=tuple(parse_qsl(urlsplit(url).query, keep_blank_values=True)),
                headers=tuple(
                    (str(h.get("name", "")), str(h.get("value", "")))
                    for h in request.get("headers") or []
                    if isinstance(h, dict)
                ),
                body=post.get("text") if isinstance(post.get("text"), str) else None,
                status=int(response.get("status") or 0),
                mime=mime,
                text=text,
                data=data,
            )
        )
    return out


def html_pages_of(har: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The server-rendered HTML documents of a capture (``(url, html)``): what a fetcher
    without a browser sees, so what a DOM recipe must be induced from."""
    return [
        (ex.url, ex.text)
        for ex in _exchanges(har)
        if ex.method == "GET" and 200 <= ex.status < 300 and "html" in ex.mime and ex.text
    ]


def _noise(ex: _Exchange) -> str | None:
    """Why an exchange cannot carry the data, or None (analytics, assets, failures)."""
    parts = urlsplit(ex.url)
    words = set(re.split(r"[/\-_.]+", parts.path.lower()))
    if words & _NOISE_WORDS or any(host in parts.netloc.lower() for host in _NOISE_HOSTS):
        return "analytics or tracking"
    if parts.path.rsplit(".", 1)[-1].lower() in _STATIC_EXTENSIONS and "." in parts.path:
        return "a static asset"
    if not 200 <= ex.status < 300:
        return f"status {ex.status}"
    if not ex.is_json:
        return "not JSON"
    return None


# --- JSON walking --------------------------------------------------------------------


def _norm_key(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _walk(data: Any, path: JsonPath, *, depth: int = 8) -> Iterator[tuple[JsonPath, Any]]:
    """Every value with its path, the root included."""
    yield path, data
    if depth <= 0:
        return
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, [*path, key], depth=depth - 1)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _walk(value, [*path, index], depth=depth - 1)


def _find_value(data: Any, wanted: str, *, avoid: JsonPath | None = None) -> JsonPath | None:
    """The path of the first scalar equal to ``wanted`` (as text), outside ``avoid``."""
    for path, value in _walk(data, []):
        if avoid is not None and path[: len(avoid)] == avoid:
            continue
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value) == wanted:
            return path
    return None


def _keyed(data: Any, names: frozenset[str], *, avoid: JsonPath) -> Iterator[tuple[JsonPath, Any]]:
    """Values under a key of ``names`` (normalised), not inside the items list."""
    for path, value in _walk(data, [], depth=4):
        if path[: len(avoid)] == avoid:
            continue
        if path and isinstance(path[-1], str) and _norm_key(path[-1]) in names:
            yield path, value


def _object_lists(data: Any, path: JsonPath) -> Iterator[tuple[JsonPath, list[dict[str, Any]]]]:
    """Lists of >= 2 objects. A list of objects is not searched further (its nested
    lists belong to single items); other lists and objects are."""
    if isinstance(data, list):
        if len(data) >= 2 and all(isinstance(item, dict) for item in data):
            yield path, data
            return
        for index, item in enumerate(data):
            yield from _object_lists(item, [*path, index])
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _object_lists(value, [*path, key])


def _scalars(data: Any) -> Iterator[str | int | float]:
    for _, value in _walk(data, [], depth=4):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            yield value


# --- visible text --------------------------------------------------------------------


def _norm_text(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Visible:
    """The visible text of every page state, asked whether a JSON value is shown.

    Short strings and small integers match anywhere by chance, so they never count;
    floats are also tried with two decimals ("19.9" shows as "19.90")."""

    def __init__(self, page_texts: Sequence[str]) -> None:
        self.text = "\n".join(_norm_text(text) for text in page_texts)

    def _has(self, needle: str, *, numeric: bool) -> bool:
        if needle not in self.text:
            return False
        if numeric:  # "19.9" is not shown by "119.9" nor by "19.95"
            pattern = rf"(?<![\d.,]){re.escape(needle)}(?![\d]|[.,]\d)"
        else:
            pattern = rf"(?<!\w){re.escape(needle)}(?!\w)"
        return re.search(pattern, self.text) is not None

    def shows(self, value: str | int | float) -> bool:
        if isinstance(value, str):
            needle = _norm_text(value)
            return len(needle) >= 3 and self._has(needle, numeric=False)
        if isinstance(value, int):
            forms = {str(value), f"{value:,}"} if abs(value) >= 100 else set()
        else:
            forms = {repr(value), f"{value:.2f}", f"{value:,.2f}"}
            forms |= {form.replace(".", ",") for form in list(forms) if "," not in form}
        return any(self._has(form, numeric=True) for form in forms)

    def shows_item(self, item: Mapping[str, Any]) -> bool:
        return any(self.shows(value) for value in _scalars(item))


# --- the API -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hit:
    """The data list of one exchange."""

    exchange: _Exchange
    path: JsonPath
    items: list[dict[str, Any]]
    shown: int


def _best_list(ex: _Exchange, visible: _Visible) -> tuple[_Hit | None, str | None]:
    """The largest list of objects whose values the page shows, or why there is none."""
    lists = list(_object_lists(ex.data, []))
    if not lists:
        return None, None
    hits = []
    for path, items in lists:
        shown = sum(visible.shows_item(item) for item in items)
        hits.append(_Hit(ex, path, items, shown))
    good = [hit for hit in hits if hit.shown >= MIN_SHOWN_SHARE * len(hit.items)]
    if good:
        return max(good, key=lambda hit: (len(hit.items), hit.shown)), None
    best = max(hits, key=lambda hit: hit.shown / len(hit.items))
    share = best.shown / len(best.items)
    where = ".".join(map(str, best.path)) or "the root"
    return None, (
        f"{ex.method} {ex.endpoint}: the page shows values of {share:.0%} of the objects at "
        f"{where} (needs {MIN_SHOWN_SHARE:.0%})"
    )


def _plain(auth_keys: AuthKeys | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (auth_keys or {}).items():
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        if plain:
            out[name] = plain
    return out


def find_api(
    har: Mapping[str, Any],
    page_texts: Sequence[str],
    auth_keys: AuthKeys | None = None,
) -> ApiRecipe | None:
    """The API recipe for the data the page showed, or None.

    - Candidates are 2xx JSON answers holding a list of >= 2 objects (searched at any
      depth; the largest list wins) of which at least half show a string (3+ chars)
      or number (100+, or decimals) in the visible page text. Analytics, beacons,
      pixels, tag managers and static assets are skipped.
    - Exchanges of the same method and endpoint (scheme, host, path) are the pages of one
      API; the endpoint whose lists show most items wins.
    - Pagination, first match: a URL in the previous answer equal to the next request
      (``next_link``); a parameter with integers growing by 1 (``page``) or by a page
      size (``offset``); a parameter equal to a value of the previous answer
      (``cursor``, with that value's path). With a single page, names are used
      instead (page/offset/cursor parameters, next/next_cursor/total_pages keys).
    - Auth: an auth-named header, or any header or parameter whose long value an
      earlier answer supplied. A value found in an earlier JSON answer becomes a
      :class:`TokenSource` (fetched fresh at run time); a value equal to one of
      ``auth_keys`` becomes ``Auth(auth_key=name)``. Untraceable credentials, cookies
      and browser headers are dropped; no secret value is ever put in the recipe.
    """
    return _find_api(har, page_texts, auth_keys)[0]


def _find_api(
    har: Mapping[str, Any], page_texts: Sequence[str], auth_keys: AuthKeys | None
) -> tuple[ApiRecipe | None, list[str]]:
    exchanges = _exchanges(har)
    visible = _Visible(page_texts)
    reasons: list[str] = []
    groups: dict[tuple[str, str], list[_Hit]] = {}
    for ex in exchanges:
        if _noise(ex) is not None:
            continue
        hit, why = _best_list(ex, visible)
        if why is not None and not any(
            r.startswith(f"{ex.method} {ex.endpoint}:") for r in reasons
        ):
            reasons.append(why)
        if hit is not None:
            groups.setdefault((ex.method, ex.endpoint), []).append(hit)
    if not groups:
        if not reasons:
            reasons.append("no 2xx JSON answer holds a list of at least 2 objects")
        return None, reasons[:5]
    ranked = sorted(
        groups.values(),
        key=lambda hits: (sum(hit.shown for hit in hits), sum(len(hit.items) for hit in hits)),
        reverse=True,
    )
    for hits in ranked:
        recipe, why = _recipe_for(hits, exchanges, _plain(auth_keys))
        if recipe is not None:
            return recipe, reasons
        reasons.append(why)
    return None, reasons


def _members(hits: list[_Hit], exchanges: list[_Exchange]) -> tuple[JsonPath, list[_Exchange]]:
    """The items path and every exchange of the endpoint where it holds a list (the
    last page may be empty), once per URL, in capture order."""
    best = max(hits, key=lambda hit: hit.shown)
    first = hits[0].exchange
    members: list[_Exchange] = []
    seen: set[str] = set()
    for ex in exchanges:
        if (ex.method, ex.endpoint) != (first.method, first.endpoint) or _noise(ex):
            continue
        try:
            items = value_at(ex.data, best.path)
        except KeyError:
            continue
        if isinstance(items, list) and ex.url not in seen:
            seen.add(ex.url)
            members.append(ex)
    return best.path, members


def _recipe_for(
    hits: list[_Hit], exchanges: list[_Exchange], keys: dict[str, str]
) -> tuple[ApiRecipe | None, str]:
    items_path, members = _members(hits, exchanges)
    first = members[0]
    if first.method not in ("GET", "POST"):
        return None, f"{first.method} {first.endpoint}: only GET and POST APIs are replayed"
    fields: list[str] = []
    for ex in members:
        for item in value_at(ex.data, items_path):
            if isinstance(item, dict):
                fields.extend(key for key in item if key not in fields)
    pagination = _pagination(members, items_path)
    secrets = set(keys.values())
    auth, secret_slots, auth_notes = _auth(first, exchanges, keys, secrets, pagination.param)
    for note in auth_notes:
        log.warning("%s %s: %s", first.method, first.endpoint, note)
    params: dict[str, str] = {}
    for name, value in first.query:
        if name == pagination.param or ("param", name) in secret_slots:
            continue
        if any(ex.param(name) != value for ex in members):
            log.info("%s: dropping the varying parameter %s", first.endpoint, name)
            continue
        params[name] = value
    headers: dict[str, str] = {}
    for name, value in first.headers:
        lowered = name.lower()
        if (
            lowered.startswith((":", "sec-"))
            or lowered in _VOLATILE_HEADERS
            or ("header", lowered) in secret_slots
            or (lowered == "content-type" and first.method == "GET")
        ):
            continue
        if all(ex.header(name) == value for ex in members):
            headers[name] = value
    body = first.body if first.method == "POST" else None
    recipe = ApiRecipe(
        endpoint=first.endpoint,
        method="POST" if first.method == "POST" else "GET",
        params=params,
        headers=headers,
        body=body,
        auth=auth,
        pagination=pagination,
        items_path=items_path,
        fields=fields,
        id_field=next((name for name in ID_FIELDS if name in fields), None),
    )
    if _leaks(recipe, secrets):
        return None, f"{first.method} {first.endpoint}: a credential would be written into it"
    return recipe, ""


def _leaks(recipe: ApiRecipe, secrets: set[str]) -> bool:
    blob = recipe.model_dump_json()
    return any(
        len(secret) >= 4 and (secret in blob or json.dumps(secret)[1:-1] in blob)
        for secret in secrets
    )


Slot = tuple[Literal["header", "param"], str]


def _auth(
    first: _Exchange,
    exchanges: list[_Exchange],
    keys: dict[str, str],
    secrets: set[str],
    pagination_param: str | None,
) -> tuple[Auth | None, set[Slot], list[str]]:
    """The credential of the data requests and where its value comes from; every slot
    (header or parameter) that carries a credential, so none is replayed; notes on
    credentials whose origin was not found. Adds the values seen to ``secrets``."""
    earlier = exchanges[: first.index]
    found: list[tuple[Slot, str, str]] = []  # (slot, name as captured, value)
    for name, value in first.headers:
        lowered = name.lower()
        if lowered.startswith(":") or lowered == "cookie":
            continue
        if lowered in _AUTH_HEADERS or _is_credential(value, keys, earlier):
            found.append((("header", lowered), name, value))
    for name, value in first.query:
        if name != pagination_param and _is_credential(value, keys, earlier):
            found.append((("param", name), name, value))
    auth: Auth | None = None
    notes: list[str] = []
    for slot, name, value in found:
        match = _SCHEME.match(value) if slot[0] == "header" else None
        scheme, token = (match.group(1), match.group(2)) if match else ("", value)
        secrets.update({value, token})
        origin = _origin(token, scheme, value, keys, earlier)
        if origin is None:
            notes.append(f"the credential in {slot[0]} {name} has no known origin; not replayed")
        elif auth is not None:
            notes.append(f"a second credential in {slot[0]} {name} is not replayed")
        elif slot[0] == "header":
            auth = Auth(header=name, **origin)
        else:
            auth = Auth(header=None, param=name, **origin)
    return auth, {slot for slot, _, _ in found}, notes


def _is_credential(value: str, keys: dict[str, str], earlier: list[_Exchange]) -> bool:
    """A value that is one of the task's keys, or a token-like value an earlier answer
    supplied (har2requests' rule: 16+ characters)."""
    match = _SCHEME.match(value)
    token = match.group(2) if match else value
    if value in keys.values() or token in keys.values():
        return True
    return _TOKEN_LIKE.match(token) is not None and _trace(token, earlier) is not None


def _origin(
    token: str, scheme: str, value: str, keys: dict[str, str], earlier: list[_Exchange]
) -> dict[str, Any] | None:
    """Auth arguments saying where the credential comes from, or None."""
    for name, plain in keys.items():
        if plain == token:
            return {"auth_key": name, "scheme": scheme}
        if plain == value:
            return {"auth_key": name, "scheme": ""}
    for candidate, candidate_scheme in ((token, scheme), (value, "")):
        source = _trace(candidate, earlier)
        if source is not None:
            return {"token_source": source, "scheme": candidate_scheme}
    return None


def _trace(value: str, earlier: list[_Exchange]) -> TokenSource | None:
    """The latest earlier JSON answer holding ``value``, as a token source."""
    for ex in reversed(earlier):
        if not ex.is_json or not 200 <= ex.status < 300 or ex.method not in ("GET", "POST"):
            continue
        path = _find_value(ex.data, value)
        if path is not None:
            method: Literal["GET", "POST"] = "POST" if ex.method == "POST" else "GET"
            return TokenSource(url=ex.url, method=method, json_path=path)
    return None


def _same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc, pa.path) == (pb.scheme, pb.netloc, pb.path) and sorted(
        parse_qsl(pa.query, keep_blank_values=True)
    ) == sorted(parse_qsl(pb.query, keep_blank_values=True))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"-?\d+", value) else None


def _pagination(members: list[_Exchange], items_path: JsonPath) -> Pagination:
    """How the pages of one endpoint follow each other (see :func:`find_api`)."""
    first = members[0]
    size_param = next((n for n, v in first.query if _norm_key(n) in _SIZE_PARAMS and _int(v)), None)
    size = _int(first.param(size_param)) if size_param else None
    first_count = len(value_at(first.data, items_path))
    totals = [
        path
        for path, value in _keyed(first.data, _TOTAL_PAGES_KEYS, avoid=items_path)
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    total_path = totals[0] if totals else None
    common: dict[str, Any] = {"size_param": size_param, "size": size}
    if len(members) >= 2:
        path = _consistent(members, partial(_next_link_in, items_path=items_path))
        if path is not None:
            return Pagination(kind="next_link", next_path=path, **common)
        names = list(dict.fromkeys(n for ex in members for n, _ in ex.query))
        varying = [n for n in names if len({ex.param(n) for ex in members}) > 1]
        for name in varying:
            arithmetic = _arithmetic(
                [_int(ex.param(name)) for ex in members], name, size or first_count
            )
            if arithmetic is not None:
                kind, start, step = arithmetic
                return Pagination(
                    kind=kind,
                    param=name,
                    start=start,
                    step=step,
                    total_pages_path=total_path if kind == "page" else None,
                    **common,
                )
        for name in varying:
            path = _consistent(members, _cursor_link(name, items_path))
            if path is not None:
                return Pagination(kind="cursor", param=name, cursor_path=path, **common)
    return _hinted(first, items_path, first_count, total_path, common)


_Link = Callable[[_Exchange, _Exchange], "JsonPath | None"]


def _consistent(members: list[_Exchange], find: _Link) -> JsonPath | None:
    """The one path that links every answer to the next request, or None."""
    paths = [find(prev, ex) for prev, ex in pairwise(members)]
    first = paths[0] if paths else None
    return first if first is not None and all(path == first for path in paths) else None


def _next_link_in(prev: _Exchange, ex: _Exchange, items_path: JsonPath) -> JsonPath | None:
    for path, value in _walk(prev.data, [], depth=4):
        if path[: len(items_path)] == items_path:
            continue
        if isinstance(value, str) and value and _same_url(urljoin(prev.url, value), ex.url):
            return path
    return None


def _cursor_link(name: str, items_path: JsonPath) -> _Link:
    """Finds where the previous answer holds the value of parameter ``name``."""

    def find(prev: _Exchange, ex: _Exchange) -> JsonPath | None:
        value = ex.param(name)
        return _find_value(prev.data, value, avoid=items_path) if value else None

    return find


def _arithmetic(
    values: list[int | None], name: str, page_size: int
) -> tuple[Literal["page", "offset"], int, int] | None:
    """("page", start, 1) or ("offset", start, step) when ``values`` grow evenly; the
    first request may omit the parameter (page 1, offset 0)."""
    leading = values[0] is None
    present = values[1:] if leading else values
    if not present or any(value is None for value in present):
        return None
    ints = [value for value in present if value is not None]
    steps = {b - a for a, b in pairwise(ints)}
    if len(steps) > 1 or (steps and min(steps) < 1):
        return None
    if steps:
        step = steps.pop()
    elif leading and _norm_key(name) in _PAGE_PARAMS and ints[0] == 2:
        step = 1
    elif leading and ints[0] >= 1 and (ints[0] == page_size or _norm_key(name) in _OFFSET_PARAMS):
        step = ints[0]
    else:
        return None
    start = ints[0] - step if leading else ints[0]
    if step == 1 and _norm_key(name) not in _OFFSET_PARAMS:
        return "page", start, 1
    return "offset", start, step


def _hinted(
    first: _Exchange,
    items_path: JsonPath,
    first_count: int,
    total_path: JsonPath | None,
    common: dict[str, Any],
) -> Pagination:
    """Pagination from names alone, when the capture has one page of the endpoint."""
    for path, value in _keyed(first.data, _NEXT_KEYS, avoid=items_path):
        if path[-1] == "href" and (len(path) < 2 or _norm_key(str(path[-2])) != "next"):
            continue
        if isinstance(value, str) and value.startswith(("http://", "https://", "/", "?")):
            return Pagination(kind="next_link", next_path=path, **common)
    for path, value in _keyed(first.data, _CURSOR_KEYS, avoid=items_path):
        if isinstance(value, str) and value:
            present = [n for n, _ in first.query if _norm_key(n) in _CURSOR_PARAMS]
            key = str(path[-1])
            derived = re.sub(r"^next_?", "", key, flags=re.IGNORECASE) or key
            param = present[0] if present else derived[:1].lower() + derived[1:]
            return Pagination(kind="cursor", param=param, cursor_path=path, **common)
    for name, value in first.query:
        number = _int(value)
        if number is None:
            continue
        if _norm_key(name) in _PAGE_PARAMS:
            return Pagination(
                kind="page", param=name, start=number, total_pages_path=total_path, **common
            )
        if _norm_key(name) in _OFFSET_PARAMS:
            step = common["size"] or first_count
            return Pagination(kind="offset", param=name, start=number, step=step, **common)
    if total_path is not None and value_at(first.data, total_path) > 1:
        return Pagination(kind="page", param="page", total_pages_path=total_path, **common)
    return Pagination(kind="none", **common)


# --- the DOM -------------------------------------------------------------------------

_SKIPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "path", "option", "br", "hr"}
    | {"meta", "link", "head", "input"}
)
_STABLE = re.compile(r"^[A-Za-z_][A-Za-z_-]*$")
_NEXT_TEXTS = frozenset({"next", "next page", "more", "older"})
_BARE_TAGS = ("a", "img", "time", "h1", "h2", "h3", "h4", "h5", "h6")


def _tag(sel: Selector) -> str:
    return str(sel.xpath("name()").get() or "").lower()


def _stable_classes(sel: Selector) -> list[str]:
    """Class tokens a person wrote (no digits: generated hashes and grid columns have)."""
    return [token for token in sel.attrib.get("class", "").split() if _STABLE.match(token)]


def _text(sel: Selector) -> str:
    return " ".join(" ".join(sel.xpath(".//text()").getall()).split())


@dataclass(frozen=True)
class _DomCandidate:
    url: str
    item_selector: str
    fields: dict[str, FieldSelector]
    count: int

    @property
    def score(self) -> int:
        return self.count * len(self.fields)


def find_dom(
    html_pages: Sequence[tuple[str, str]], page_texts: Sequence[str] | None = None
) -> DomRecipe | None:
    """The DOM recipe for server-rendered pages (``(url, html)``), or None.

    - Items are the children of one parent sharing tag and first stable class, at least
      :data:`MIN_SIBLINGS` of them; the candidate with most items x fields wins. With
      ``page_texts``, at least half of the items' texts must be visible.
    - The item selector is anchored on the parent's id or class (``#products >
      li.product``) and must match exactly those items; never on positions.
    - Fields: the item's own ``data-*`` attributes; descendants with a stable class (or
      a lone a/img/h1-h6/time) that hold text, their ``href``/``src``, their ``data-*``
      attributes; kept when at least half of the items have them.
    - The next link: ``a[rel~=next]``, else a link reading "Next", selected by its class
      or its parent's.
    """
    return _find_dom(html_pages, page_texts)[0]


def _find_dom(
    html_pages: Sequence[tuple[str, str]], page_texts: Sequence[str] | None
) -> tuple[DomRecipe | None, list[str]]:
    if not html_pages:
        return None, ["no server-rendered HTML page to induce selectors from"]
    visible = _Visible(page_texts) if page_texts is not None else None
    best: _DomCandidate | None = None
    for url, html in html_pages:
        page = Selector(text=html)
        for candidate in _dom_candidates(url, page, visible):
            if best is None or candidate.score > best.score:
                best = candidate
    if best is None:
        return None, [
            f"no element repeats {MIN_SIBLINGS}+ times with text fields "
            f"in {len(html_pages)} HTML page(s)"
        ]
    # the capture's first page that has the items is where a run starts
    start = next(url for url, html in html_pages if Selector(text=html).css(best.item_selector))
    recipe = DomRecipe(
        start_url=start,
        item_selector=best.item_selector,
        fields=best.fields,
        next_selector=_next_selector(html_pages),
        id_field=next((name for name in ID_FIELDS if name in best.fields), None),
    )
    return recipe, []


def _dom_candidates(url: str, page: Selector, visible: _Visible | None) -> Iterator[_DomCandidate]:
    for parent in page.xpath("//*[count(*) >= $n]", n=MIN_SIBLINGS):
        if _tag(parent) in _SKIPPED_TAGS:
            continue
        groups: dict[tuple[str, str], list[Selector]] = {}
        for child in parent.xpath("./*"):
            tag = _tag(child)
            classes = _stable_classes(child)
            if tag not in _SKIPPED_TAGS:
                groups.setdefault((tag, classes[0] if classes else ""), []).append(child)
        for (tag, _), members in groups.items():
            if len(members) < MIN_SIBLINGS:
                continue
            if visible is not None:
                shown = sum(
                    any(visible.shows(text) for text in member.xpath(".//text()").getall())
                    for member in members
                )
                if shown < MIN_SHOWN_SHARE * len(members):
                    continue
            fields = _induce_fields(members)
            if not any(selector.attr is None for selector in fields.values()):
                continue
            common = [
                token
                for token in _stable_classes(members[0])
                if all(token in _stable_classes(member) for member in members)
            ]
            selector = _item_selector(page, parent, tag, common, len(members))
            if selector is not None:
                yield _DomCandidate(url, selector, fields, len(members))


def _item_selector(
    page: Selector, parent: Selector, tag: str, classes: list[str], count: int
) -> str | None:
    """A selector matching exactly the ``count`` items: anchored on the parent's id or
    class, else on the nearest ancestor with an id (``#prices tbody > tr``)."""
    own = tag + "".join(f".{token}" for token in classes)
    options = []
    parent_id = parent.attrib.get("id", "")
    if _STABLE.match(parent_id):
        options.append(f"#{parent_id} > {own}")
    parent_classes = _stable_classes(parent)
    if parent_classes:
        options.append(f"{_tag(parent)}.{parent_classes[0]} > {own}")
    if classes:
        options.append(own)
    for ancestor in reversed(parent.xpath("ancestor::*[@id]")[-3:]):
        if _STABLE.match(ancestor.attrib["id"]):
            options.append(f"#{ancestor.attrib['id']} {_tag(parent)} > {own}")
    return next((option for option in options if len(page.css(option)) == count), None)


def _field_name(css: str, attr: str | None) -> str:
    if attr is not None and attr.startswith("data-"):
        base = attr[len("data-") :]
    elif css.startswith("."):
        base = css[1:]
        if attr == "href":
            base += "_url"
        elif attr == "src":
            base += "_src"
    else:
        base = {"a": "link", "img": "image"}.get(css, css)
        if css == "a" and attr is None:
            base = "link_text"
    return re.sub(r"\W+", "_", base).strip("_").lower() or "field"


def _induce_fields(members: list[Selector]) -> dict[str, FieldSelector]:
    counts: dict[tuple[str, str | None], int] = {}
    for member in members:
        found: list[tuple[str, str | None]] = [
            ("", attr) for attr in member.attrib if attr.startswith("data-")
        ]
        for node in member.xpath(".//*"):
            tag = _tag(node)
            if tag in _SKIPPED_TAGS:
                continue
            classes = _stable_classes(node)
            if classes:
                css = f".{classes[0]}"
            elif tag in _BARE_TAGS and len(member.xpath(f".//{tag}")) == 1:
                css = tag
            else:
                continue
            nested_classes = node.xpath(".//*[@class]")
            if node.xpath("./text()[normalize-space()]") or (_text(node) and not nested_classes):
                found.append((css, None))
            if tag == "a" and node.attrib.get("href"):
                found.append((css, "href"))
            if tag == "img" and node.attrib.get("src"):
                found.append((css, "src"))
            found.extend((css, attr) for attr in node.attrib if attr.startswith("data-"))
        for key in dict.fromkeys(found):
            counts[key] = counts.get(key, 0) + 1
    fields: dict[str, FieldSelector] = {}
    for (css, attr), seen in counts.items():
        if seen < MIN_SHOWN_SHARE * len(members):
            continue
        name = base = _field_name(css, attr)
        suffix = 2
        while name in fields:
            name, suffix = f"{base}_{suffix}", suffix + 1
        fields[name] = FieldSelector(css=css, attr=attr)
    return fields


def _next_selector(html_pages: Sequence[tuple[str, str]]) -> str | None:
    for _, html in html_pages:
        page = Selector(text=html)
        if page.css("a[rel~=next][href]"):
            return "a[rel~=next]"
        for link in page.xpath("//a[@href]"):
            words = re.sub(r"[\s\u203a\u00bb\u2192>]+$", "", _text(link)).strip()
            if words.casefold() not in _NEXT_TEXTS:
                continue
            parent = link.xpath("..")[0]
            options = [f"a.{token}" for token in _stable_classes(link)[:1]]
            options += [f"{_tag(parent)}.{token} > a" for token in _stable_classes(parent)[:1]]
            if "'" not in words and '"' not in words:
                options.append(f'a:contains("{words}")')
            for option in options:
                matches = page.css(option)
                if matches and matches[0].get() == link.get():
                    return option
    return None


def analyse(
    har: Mapping[str, Any],
    page_texts: Sequence[str],
    auth_keys: AuthKeys | None = None,
    *,
    html_pages: Sequence[tuple[str, str]] | None = None,
) -> ApiRecipe | DomRecipe:
    """The recipe for a capture: its data API if one carries what the page showed, else
    selectors for its server-rendered HTML (``html_pages``, by default the HTML
    documents of the HAR). ``NoDataFound`` lists why neither worked."""
    api, api_reasons = _find_api(har, page_texts, auth_keys)
    if api is not None:
        return api
    pages = html_pages if html_pages is not None else html_pages_of(har)
    dom, dom_reasons = _find_dom(pages, page_texts)
    if dom is not None:
        return dom
    raise NoDataFound([*api_reasons, *dom_reasons])
