"""The base classes a generic spider runs: a recipe in, Scrapy requests and item dicts out.

Generated modules only subclass :class:`ApiFetcher` or :class:`DomFetcher` with a
``RECIPE``; all behaviour lives here, so a fix reaches every generated version. The
spider calls :meth:`BaseFetcher.first_requests` once, then :meth:`BaseFetcher.parse`
on every response; which step a response answers (``token`` or ``page``) travels in
``request.meta["hydra_fetcher_step"]``, as does the page position, so a fetcher holds no
state between responses. A credential travels only in the request it authenticates.

Failures are classified for the caller: :class:`SiteChanged` (the data's shape or a
known endpoint is gone: heal), :class:`AuthRejected` (401/403 or a missing key: a
person), :class:`TransientFailure` (429/5xx that reached ``parse``: retry). Network
errors never reach ``parse``; Scrapy's retry middleware handles them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from parsel import Selector
from pydantic import SecretStr
from scrapy import Request
from scrapy.http import TextResponse

from crawlers.fetchers.recipes import ApiRecipe, DomRecipe, FieldSelector, value_at

log = logging.getLogger(__name__)

#: ``request.meta`` keys: the step ("token" or "page"), the page's position (page
#: number, offset or cursor), pages fetched before it, its predecessor's fingerprint
STEP = "hydra_fetcher_step"
POSITION = "hydra_fetcher_position"
INDEX = "hydra_fetcher_index"
PREVIOUS = "hydra_fetcher_previous"
#: statuses ``parse`` must see to classify them (others are retried or dropped first)
HANDLED_STATUSES = (400, 401, 403, 404, 410)
#: a safety net against a site whose "next" never ends
MAX_PAGES = 10_000

Item = dict[str, Any]
AuthKeys = Mapping[str, "SecretStr | str | None"]


class FetcherError(Exception):
    """A fetch failed; ``classification`` says what should happen next. The reason
    never holds a credential."""

    classification: ClassVar[str] = "error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SiteChanged(FetcherError):
    """The site no longer matches the recipe (a known endpoint is 404/410, the items or
    fields are gone, selectors match nothing): a heal task, not a retry."""

    classification = "website_changed"


class AuthRejected(FetcherError):
    """The credential was refused (401/403) or the task lacks the key the recipe names:
    neither a retry nor a heal helps, a person must renew it."""

    classification = "auth"


class TransientFailure(FetcherError):
    """429 or 5xx reached ``parse``: retry later."""

    classification = "transient"


def _fingerprint(items: list[Item]) -> str:
    raw = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


class BaseFetcher(ABC):
    """What the spider calls; ``max_pages`` bounds a run whatever the site answers."""

    def __init__(self, *, max_pages: int = MAX_PAGES) -> None:
        self.max_pages = max_pages

    @abstractmethod
    def first_requests(
        self, auth_keys: AuthKeys | None = None, *, url: str | None = None
    ) -> list[Request]:
        """The requests that start a run (a token request first when the recipe has a
        token source); ``auth_keys`` are the task's, by name; ``url`` is the channel's
        page, where a DOM fetcher starts (an API fetcher's endpoint is the site's)."""

    @abstractmethod
    def parse(self, response: TextResponse) -> tuple[list[Item], list[Request]]:
        """The items of ``response`` and the requests that follow it."""

    def _check_status(self, response: TextResponse) -> None:
        status, where = response.status, _where(response.url)
        if status in (401, 403):
            raise AuthRejected(f"{where} answered {status}: the credential was refused")
        if status == 429 or status >= 500:
            raise TransientFailure(f"{where} answered {status}")
        if status >= 400:
            raise SiteChanged(f"{where} answered {status}: the endpoint moved or is gone")

    def _meta(self, step: str, index: int, **more: Any) -> dict[str, Any]:
        return {STEP: step, INDEX: index, "handle_httpstatus_list": list(HANDLED_STATUSES), **more}

    def _more_pages(self, response: TextResponse, items: list[Item]) -> tuple[int, str] | None:
        """(index of the next page, fingerprint of this one), or None to stop: an empty
        page ends a run; a page equal to its predecessor means the site ignores the
        pagination parameter (it changed)."""
        if not items:
            return None
        index = int(response.meta.get(INDEX, 0)) + 1
        if index >= self.max_pages:
            log.warning("%s: stopped after %d pages", _where(response.url), index)
            return None
        fingerprint = _fingerprint(items)
        if fingerprint == response.meta.get(PREVIOUS):
            raise SiteChanged(
                f"{_where(response.url)} repeats the previous page: pagination is ignored"
            )
        return index, fingerprint


def _where(url: str) -> str:
    """The URL without its query, which may hold a credential."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1], query=""))


def _with_params(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def _json(response: TextResponse) -> Any:
    try:
        return json.loads(response.text)
    except ValueError:
        raise SiteChanged(f"{_where(response.url)} no longer answers JSON") from None


class ApiFetcher(BaseFetcher):
    """Runs an :class:`ApiRecipe`: fetch a token if needed, then every page."""

    RECIPE: ClassVar[ApiRecipe]

    def __init__(self, recipe: ApiRecipe | None = None, *, max_pages: int = MAX_PAGES) -> None:
        super().__init__(max_pages=max_pages)
        self.recipe = recipe if recipe is not None else type(self).RECIPE

    def first_requests(
        self, auth_keys: AuthKeys | None = None, *, url: str | None = None
    ) -> list[Request]:
        auth = self.recipe.auth
        if auth is not None and auth.token_source is not None:
            source = auth.token_source
            return [
                Request(
                    source.url,
                    method=source.method,
                    headers=dict(self.recipe.headers),
                    meta=self._meta("token", 0),
                    dont_filter=True,
                )
            ]
        credential: str | None = None
        if auth is not None and auth.auth_key is not None:
            secret = (auth_keys or {}).get(auth.auth_key)
            plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if not plain:
                raise AuthRejected(f"the task has no auth_keys.{auth.auth_key}")
            credential = plain
        return [self._page(self._start(), credential, index=0)]

    def parse(self, response: TextResponse) -> tuple[list[Item], list[Request]]:
        self._check_status(response)
        data = _json(response)
        if response.meta.get(STEP) == "token":
            return [], [self._page(self._start(), self._token(response, data), index=0)]
        items = self._items(response, data)
        return items, self._next(response, data, items)

    def _start(self) -> int | None:
        pagination = self.recipe.pagination
        return pagination.start if pagination.kind in ("page", "offset") else None

    def _token(self, response: TextResponse, data: Any) -> str:
        assert self.recipe.auth is not None and self.recipe.auth.token_source is not None
        path = self.recipe.auth.token_source.json_path
        try:
            token = value_at(data, path)
        except KeyError:
            token = None
        if not isinstance(token, str | int) or isinstance(token, bool) or token == "":
            raise SiteChanged(f"{_where(response.url)} holds no token at {path}")
        return str(token)

    def _page(
        self,
        position: int | str | None,
        credential: str | None,
        *,
        index: int,
        url: str | None = None,
        previous: str | None = None,
    ) -> Request:
        """The request of one page: the recipe's URL with ``position`` in the pagination
        parameter, or ``url`` (a next link); the credential in its header or parameter."""
        recipe, pagination, auth = self.recipe, self.recipe.pagination, self.recipe.auth
        if url is None:
            params = dict(recipe.params)
            if pagination.param is not None and position is not None:
                params[pagination.param] = str(position)
            url = _with_params(recipe.endpoint, params)
        headers = dict(recipe.headers)
        if auth is not None and credential is not None:
            if auth.header is not None:
                headers[auth.header] = f"{auth.scheme} {credential}" if auth.scheme else credential
            elif auth.param is not None:
                url = _with_params(url, {auth.param: credential})
        meta = self._meta("page", index, **{POSITION: position, PREVIOUS: previous})
        return Request(
            url,
            method=recipe.method,
            headers=headers,
            body=recipe.body,
            meta=meta,
            dont_filter=True,
        )

    def _credential(self, response: TextResponse) -> str | None:
        """The credential the request of ``response`` carried, for the next page."""
        auth, request = self.recipe.auth, response.request
        if auth is None or request is None:
            return None
        if auth.header is not None:
            raw = request.headers.get(auth.header)
            if raw is None:
                return None
            value = raw.decode("latin-1")
            prefix = f"{auth.scheme} " if auth.scheme else ""
            return value[len(prefix) :] if value.startswith(prefix) else value
        query = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        return query.get(auth.param or "")

    def _items(self, response: TextResponse, data: Any) -> list[Item]:
        recipe, where = self.recipe, _where(response.url)
        try:
            found = value_at(data, recipe.items_path)
        except KeyError:
            raise SiteChanged(f"{where} has no items at {recipe.items_path}") from None
        if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
            raise SiteChanged(f"{where}: {recipe.items_path} is no longer a list of objects")
        missing = [name for name in recipe.fields if found and all(name not in i for i in found)]
        if missing:
            raise SiteChanged(f"{where}: no item has the fields {', '.join(missing)}")
        return [{name: item.get(name) for name in recipe.fields} for item in found]

    def _next(self, response: TextResponse, data: Any, items: list[Item]) -> list[Request]:
        pagination = self.recipe.pagination
        if pagination.kind == "none":
            return []
        more = self._more_pages(response, items)
        if more is None:
            return []
        index, fingerprint = more
        credential = self._credential(response)
        position = response.meta.get(POSITION)
        if pagination.kind in ("page", "offset"):
            if pagination.total_pages_path is not None:
                try:
                    total = value_at(data, pagination.total_pages_path)
                except KeyError:
                    total = None
                if isinstance(total, int) and index >= total:
                    return []
            start = pagination.start if position is None else int(position)
            following = start + pagination.step
            return [self._page(following, credential, index=index, previous=fingerprint)]
        path = pagination.cursor_path if pagination.kind == "cursor" else pagination.next_path
        assert path is not None
        try:
            value = value_at(data, path)
        except KeyError:
            value = None
        if value is None or value == "" or isinstance(value, dict | list | bool):
            return []
        if pagination.kind == "cursor":
            if str(value) == position:
                return []
            return [self._page(str(value), credential, index=index, previous=fingerprint)]
        url = response.urljoin(str(value))
        if url == response.url:
            return []
        return [self._page(None, credential, index=index, url=url, previous=fingerprint)]


class DomFetcher(BaseFetcher):
    """Runs a :class:`DomRecipe`: the items of each page, then its next link."""

    RECIPE: ClassVar[DomRecipe]

    def __init__(self, recipe: DomRecipe | None = None, *, max_pages: int = MAX_PAGES) -> None:
        super().__init__(max_pages=max_pages)
        self.recipe = recipe if recipe is not None else type(self).RECIPE

    def first_requests(
        self, auth_keys: AuthKeys | None = None, *, url: str | None = None
    ) -> list[Request]:
        start = url or self.recipe.start_url
        return [Request(start, meta=self._meta("page", 0), dont_filter=True)]

    def parse(self, response: TextResponse) -> tuple[list[Item], list[Request]]:
        self._check_status(response)
        recipe, where = self.recipe, _where(response.url)
        nodes = response.css(recipe.item_selector)
        if not nodes:
            raise SiteChanged(f"{where}: {recipe.item_selector!r} matches nothing")
        items = [
            {name: _field(node, selector) for name, selector in recipe.fields.items()}
            for node in nodes
        ]
        missing = [name for name in recipe.fields if all(item[name] is None for item in items)]
        if missing:
            raise SiteChanged(f"{where}: no item has the fields {', '.join(missing)}")
        return items, self._next(response, items)

    def _next(self, response: TextResponse, items: list[Item]) -> list[Request]:
        if self.recipe.next_selector is None:
            return []
        href = response.css(self.recipe.next_selector).xpath("@href").get()
        more = self._more_pages(response, items) if href else None
        if href is None or more is None:
            return []
        url = response.urljoin(href)
        if url == response.url:
            return []
        index, fingerprint = more
        meta = self._meta("page", index, **{PREVIOUS: fingerprint})
        return [Request(url, meta=meta, dont_filter=True)]


def _field(node: Selector, selector: FieldSelector) -> str | None:
    """One field of an item: text normalised, or an attribute; None when absent."""
    target = node
    if selector.css:
        found = node.css(selector.css)
        if not found:
            return None
        target = found[0]
    if selector.attr is not None:
        value = target.attrib.get(selector.attr)
        return str(value) if value is not None else None
    text = " ".join(" ".join(target.xpath(".//text()").getall()).split())
    return text or None


def fetcher_for(recipe: ApiRecipe | DomRecipe, *, max_pages: int = MAX_PAGES) -> BaseFetcher:
    """The fetcher that runs ``recipe`` (without a generated module)."""
    if isinstance(recipe, ApiRecipe):
        return ApiFetcher(recipe, max_pages=max_pages)
    return DomFetcher(recipe, max_pages=max_pages)
