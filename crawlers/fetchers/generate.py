"""Render a recipe as a fetcher module a person can read, review in git and edit.

The module names every part of the recipe as a constant (``ENDPOINT``, ``PARAMS``,
``TOKEN_URL``...) and its ``Fetcher`` class builds ``RECIPE`` from them; the behaviour
stays in :mod:`crawlers.fetchers.runtime`, so generated code is data, not logic. The
output is already in ``ruff format`` style (collections too long for a line are split
one element per line with a trailing comma) and passes ``ruff check``: non-ASCII text is
escaped, docstrings are wrapped, and nothing is left to a formatter at run time.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from crawlers.fetchers.recipes import ApiRecipe, Auth, DomRecipe, Pagination

LINE_LENGTH = 100
_INDENT = "    "


@dataclass(frozen=True)
class _Name:
    """A bare name in the rendered code (a constant)."""

    name: str


@dataclass(frozen=True)
class _Call:
    """``name(key=value, ...)`` in the rendered code."""

    name: str
    kwargs: list[tuple[str, Any]] = field(default_factory=list)


def _str(text: str) -> str:
    """A string literal as ``ruff format`` writes it: double quotes unless the text has
    more of them than single quotes; anything but printable ASCII escaped."""
    quote = "'" if text.count('"') > text.count("'") else '"'
    out = []
    for char in text:
        code = ord(char)
        if char in ("\\", quote):
            out.append("\\" + char)
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif 32 <= code < 127:
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return quote + "".join(out) + quote


def _parts(value: Any) -> tuple[str, str, list[tuple[str, Any]]] | None:
    """(opening, closing, [(prefix, element)]) of a splittable value, else None."""
    if isinstance(value, _Call) and value.kwargs:
        return f"{value.name}(", ")", [(f"{key}=", item) for key, item in value.kwargs]
    if isinstance(value, list) and value:
        return "[", "]", [("", item) for item in value]
    if isinstance(value, dict) and value:
        return "{", "}", [(f"{_inline(key)}: ", item) for key, item in value.items()]
    return None


def _inline(value: Any) -> str:
    if isinstance(value, _Name):
        return value.name
    if isinstance(value, str):
        return _str(value)
    if value is None or isinstance(value, bool | int):
        return repr(value)
    parts = _parts(value)
    if isinstance(value, _Call) and parts is None:
        return f"{value.name}()"
    if parts is None:
        return "[]" if isinstance(value, list) else "{}"
    opening, closing, elements = parts
    return opening + ", ".join(prefix + _inline(item) for prefix, item in elements) + closing


def _expr(value: Any, indent: int, used: int, trailing: int) -> list[str]:
    """``value`` as lines: the first continues a line of ``used`` characters, the last is
    followed by ``trailing`` more; what does not fit is split one element per line."""
    one = _inline(value)
    parts = _parts(value)
    if used + len(one) + trailing <= LINE_LENGTH or parts is None:
        return [one]
    opening, closing, elements = parts
    inner = indent + len(_INDENT)
    lines = [opening]
    for prefix, item in elements:
        sub = _expr(item, inner, inner + len(prefix), 1)
        sub[0] = " " * inner + prefix + sub[0]
        sub[-1] += ","
        lines.extend(sub)
    lines.append(" " * indent + closing)
    return lines


def _statement(target: str, value: Any, indent: int = 0) -> list[str]:
    """``target = value``; a value that fits only on a line of its own goes in
    parentheses, as ruff puts it (a longer one stays where it is)."""
    head = " " * indent + f"{target} = "
    lines = _expr(value, indent, len(head), 0)
    inner = indent + len(_INDENT)
    if len(lines) == 1 and len(head + lines[0]) > LINE_LENGTH >= inner + len(lines[0]):
        return [head + "(", " " * inner + lines[0], " " * indent + ")"]
    lines[0] = head + lines[0]
    return lines


def _comment(text: str) -> list[str]:
    return textwrap.wrap(_plain(text), LINE_LENGTH, initial_indent="#: ", subsequent_indent="#: ")


def _plain(text: str) -> str:
    """Free text safe in a docstring or comment: ASCII, no quotes or backslashes."""
    text = text.encode("ascii", "backslashreplace").decode("ascii").replace("\\", "/")
    text = "".join(char if char.isprintable() else " " for char in text)
    return " ".join(text.replace('"', "'").split())


def _docstring(summary: str, paragraphs: Sequence[str]) -> list[str]:
    first = textwrap.wrap(_plain(summary), width=LINE_LENGTH - 3, break_on_hyphens=False)
    lines = ['"""' + first[0], *first[1:]]
    for paragraph in paragraphs:
        if paragraph:
            lines += ["", *textwrap.wrap(_plain(paragraph), LINE_LENGTH, break_on_hyphens=False)]
    return [*lines, '"""']


def _kwargs(
    model: BaseModel, always: Sequence[str] = (), names: dict[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """Keyword arguments of a model: ``names`` (field -> constant) first, then the
    fields in ``always`` and every field that differs from its default."""
    names = names or {}
    kwargs: list[tuple[str, Any]] = []
    for key, info in type(model).model_fields.items():
        if key in names:
            kwargs.append((key, names[key]))
            continue
        value = getattr(model, key)
        if key in always or value != info.get_default(call_default_factory=True):
            kwargs.append((key, value))
    return kwargs


def _pagination_words(pagination: Pagination) -> str:
    kind = pagination.kind
    if kind == "none":
        return "a single page."
    if kind == "page":
        until = "an empty page"
        if pagination.total_pages_path is not None:
            until += f" or the total pages at {pagination.total_pages_path}"
        return f"pages by the {pagination.param!r} parameter from {pagination.start} until {until}."
    if kind == "offset":
        return (
            f"pages by the {pagination.param!r} offset from {pagination.start} in steps of "
            f"{pagination.step} until an empty page."
        )
    if kind == "cursor":
        return (
            f"pages by the {pagination.param!r} cursor, read from {pagination.cursor_path} of "
            "each answer until it is null."
        )
    return f"pages by following the URL at {pagination.next_path} of each answer."


def _auth_words(auth: Auth | None) -> str:
    if auth is None:
        return "No credential."
    where = f"header {auth.header}" if auth.header else f"parameter {auth.param}"
    scheme = f" (scheme {auth.scheme})" if auth.scheme else ""
    if auth.token_source is not None:
        return (
            f"A fresh token from TOKEN_URL (at TOKEN_PATH of its JSON) goes in the {where}"
            f"{scheme}; the token seen in the capture is never replayed."
        )
    return f"The task's auth_keys.{auth.auth_key} goes in the {where}{scheme}."


def render_module(
    recipe: ApiRecipe | DomRecipe,
    *,
    domain: str,
    version: int,
    reason: str,
    capture: str = "",
) -> str:
    """The source of a fetcher module for ``recipe``: ``domain`` and ``version`` name it,
    ``reason`` (new channel, heal of vN and why) and ``capture`` (where the HAR is kept)
    say where it came from."""
    kind = "JSON API" if isinstance(recipe, ApiRecipe) else "server-rendered HTML"
    origin = (
        f"Generated by Hydra from the browser capture {capture}"
        if capture
        else ("Generated by Hydra from a browser capture (HAR)")
    )
    paragraphs = [f"Why: {reason.rstrip('.')}. {origin}."]
    if isinstance(recipe, ApiRecipe):
        what = f"{recipe.method} ENDPOINT with PARAMS and HEADERS; "
        what += _pagination_words(recipe.pagination)
        paragraphs += [what, _auth_words(recipe.auth)]
        paragraphs.append("Items are the objects at ITEMS_PATH, each reduced to FIELDS.")
        base, body, imports = "ApiFetcher", _api_body(recipe), _api_imports(recipe)
    else:
        paragraphs.append(
            "Items are the elements matching ITEM_SELECTOR from START_URL on; each field is "
            "the text (or attribute) of a selector inside the item; NEXT_SELECTOR finds the "
            "next page."
        )
        base, body, imports = "DomFetcher", _dom_body(recipe), "DomRecipe, FieldSelector"
    paragraphs.append(
        f"Edit the constants; the behaviour is crawlers.fetchers.runtime.{base}'s, shared by "
        "every generated fetcher."
    )
    label = _plain(domain)[:40].strip() or "the site"
    lines = _docstring(f"Fetcher for {label}, version {version}: its {kind}.", paragraphs)
    lines += [
        "",
        "from __future__ import annotations",
        "",
        f"from crawlers.fetchers.recipes import {imports}",
        f"from crawlers.fetchers.runtime import {base}",
        "",
        *_statement("DOMAIN", domain),
        *_statement("VERSION", version),
        "",
        *body[0],
        "",
        "",
        f"class Fetcher({base}):",
        f'{_INDENT}"""{label} v{version}: RECIPE built from the constants above."""',
        "",
        *_statement("RECIPE", body[1], indent=len(_INDENT)),
    ]
    return "\n".join(_noqa(line) for line in lines) + "\n"


def _noqa(line: str) -> str:
    """``line``, marked when ruff's E501 would flag it: a string too long to split.
    Same rule as ruff's, so the mark is never unused (RUF100): lines of one word, or
    ending with a URL that starts within the limit, are exempt."""
    if len(line) <= LINE_LENGTH:
        return line
    chunks = line.split()
    if len(chunks) < 2 or (chunks[0] == "#" and len(chunks) == 2):
        return line
    if "://" in chunks[-1] and len(line) - len(chunks[-1]) <= LINE_LENGTH:
        return line
    return f"{line}  # noqa: E501"


def _api_imports(recipe: ApiRecipe) -> str:
    names = ["ApiRecipe"]
    if recipe.auth is not None:
        names.append("Auth")
    names.append("Pagination")
    if recipe.auth is not None and recipe.auth.token_source is not None:
        names.append("TokenSource")
    return ", ".join(names)


def _api_body(recipe: ApiRecipe) -> tuple[list[str], _Call]:
    lines = ["#: the data endpoint, with its static query parameters and headers"]
    lines += _statement("ENDPOINT", recipe.endpoint)
    lines += _statement("PARAMS: dict[str, str]", recipe.params)
    lines += _statement("HEADERS: dict[str, str]", recipe.headers)
    names: dict[str, Any] = {
        "endpoint": _Name("ENDPOINT"),
        "params": _Name("PARAMS"),
        "headers": _Name("HEADERS"),
    }
    if recipe.body is not None:
        lines += _statement("BODY", recipe.body)
        names["body"] = _Name("BODY")
    auth = recipe.auth
    if auth is not None:
        lines += ["", *_comment(_auth_words(auth))]
        auth_names: dict[str, Any] = {}
        if auth.header is not None:
            lines += _statement("AUTH_HEADER", auth.header)
            auth_names["header"] = _Name("AUTH_HEADER")
        else:
            lines += _statement("AUTH_PARAM", auth.param)
            auth_names["param"] = _Name("AUTH_PARAM")
        lines += _statement("AUTH_SCHEME", auth.scheme)
        auth_names["scheme"] = _Name("AUTH_SCHEME")
        if auth.token_source is not None:
            lines += _statement("TOKEN_URL", auth.token_source.url)
            lines += _statement("TOKEN_PATH: list[str | int]", auth.token_source.json_path)
            source = {"url": _Name("TOKEN_URL"), "json_path": _Name("TOKEN_PATH")}
            auth_names["token_source"] = _Call(
                "TokenSource", _kwargs(auth.token_source, (), source)
            )
        else:
            lines += _statement("AUTH_KEY", auth.auth_key)
            auth_names["auth_key"] = _Name("AUTH_KEY")
        names["auth"] = _Call("Auth", _kwargs(auth, ("header",), auth_names))
    pagination = recipe.pagination
    always = ("kind", "start", "step") if pagination.kind in ("page", "offset") else ("kind",)
    lines += ["", *_comment(f"pagination: {_pagination_words(pagination)}")]
    lines += _statement("PAGINATION", _Call("Pagination", _kwargs(pagination, always)))
    names["pagination"] = _Name("PAGINATION")
    lines += ["", "#: the items: the objects at ITEMS_PATH, with these fields"]
    lines += _statement("ITEMS_PATH: list[str | int]", recipe.items_path)
    lines += _statement("FIELDS: list[str]", recipe.fields)
    lines += _statement("ID_FIELD", recipe.id_field)
    names |= {
        "items_path": _Name("ITEMS_PATH"),
        "fields": _Name("FIELDS"),
        "id_field": _Name("ID_FIELD"),
    }
    return lines, _Call("ApiRecipe", _kwargs(recipe, (), names))


def _dom_body(recipe: DomRecipe) -> tuple[list[str], _Call]:
    fields = {
        name: _Call("FieldSelector", _kwargs(selector)) for name, selector in recipe.fields.items()
    }
    lines = ["#: the first page, the items on each page, and the fields of an item"]
    lines += _statement("START_URL", recipe.start_url)
    lines += _statement("ITEM_SELECTOR", recipe.item_selector)
    lines += _statement("FIELDS: dict[str, FieldSelector]", fields)
    lines += _statement("ID_FIELD", recipe.id_field)
    lines += ["", "#: the link to the next page (None: a single page)"]
    lines += _statement("NEXT_SELECTOR", recipe.next_selector)
    names = {
        "start_url": _Name("START_URL"),
        "item_selector": _Name("ITEM_SELECTOR"),
        "fields": _Name("FIELDS"),
        "next_selector": _Name("NEXT_SELECTOR"),
        "id_field": _Name("ID_FIELD"),
    }
    return lines, _Call("DomRecipe", _kwargs(recipe, (), names))


def recipe_of(module: ModuleType) -> ApiRecipe | DomRecipe:
    """The recipe a generated (or hand-edited) module runs: its ``Fetcher.RECIPE``."""
    recipe = module.Fetcher.RECIPE
    if not isinstance(recipe, ApiRecipe | DomRecipe):
        raise TypeError(f"{module.__name__}.Fetcher.RECIPE is not a recipe")
    return recipe
