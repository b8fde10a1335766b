"""What a fetcher does, as data: an API recipe (endpoint, auth, pagination, where the
items are) or a DOM recipe (item and field selectors, the next link).

Recipes are what analysis finds in a capture, what a generated module spells out as
named constants, and what the runtime executes; keeping them plain JSON-serialisable
models (no Scrapy here) lets a heal compare two versions and a test round-trip a
rendered module. A recipe never holds a secret: tokens are fetched at run time from a
:class:`TokenSource`, static keys are named by their key in the task's ``auth_keys``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

#: a path into a JSON document: object keys and list indexes, from the root
JsonPath = list[str | int]

#: bumped when a recipe's meaning changes, so stored recipes can be migrated
RECIPE_FORMAT: Literal[1] = 1


def value_at(data: Any, path: Sequence[str | int]) -> Any:
    """The value at ``path`` in parsed JSON; ``KeyError`` when a step is missing."""
    for step in path:
        in_list = isinstance(step, int) and isinstance(data, list) and 0 <= step < len(data)
        if not (in_list or (isinstance(step, str) and isinstance(data, dict) and step in data)):
            raise KeyError(step)
        data = data[step]
    return data


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSource(_Recipe):
    """The request whose JSON answer holds a fresh token, fetched before the first page
    (replaying the token seen in the capture would fail once it expires)."""

    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "POST"] = "GET"
    json_path: JsonPath


class Auth(_Recipe):
    """Where the credential goes (a header, or a query parameter) and where it comes
    from: a :class:`TokenSource` or the task's ``auth_keys[auth_key]``."""

    header: str | None = "Authorization"
    #: the query parameter carrying the credential instead of a header
    param: str | None = None
    #: "Bearer" gives ``Authorization: Bearer <token>``; "" sends the bare value
    scheme: str = "Bearer"
    token_source: TokenSource | None = None
    #: a key of the task's ``auth_keys`` (e.g. "api_key"), never its value
    auth_key: str | None = None

    @model_validator(mode="after")
    def _one_place_one_origin(self) -> Auth:
        if (self.header is None) == (self.param is None):
            raise ValueError("set exactly one of header or param")
        if (self.token_source is None) == (self.auth_key is None):
            raise ValueError("set exactly one of token_source or auth_key")
        return self


PaginationKind = Literal["none", "page", "offset", "cursor", "next_link"]


class Pagination(_Recipe):
    """How the next page is asked for.

    ``page``: ``param`` = start, start + step... until an empty page or the total at
    ``total_pages_path``; ``offset``: ``param`` grows by ``step`` (the page size) until
    an empty page; ``cursor``: ``param`` = the value at ``cursor_path`` of the previous
    answer until it is null; ``next_link``: follow the URL at ``next_path``.
    """

    kind: PaginationKind
    param: str | None = None
    start: int = 1
    step: int = Field(1, ge=1)
    #: the page-size parameter; it is also in the recipe's static ``params``
    size_param: str | None = None
    size: int | None = None
    cursor_path: JsonPath | None = None
    next_path: JsonPath | None = None
    total_pages_path: JsonPath | None = None

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> Pagination:
        if self.kind in ("page", "offset", "cursor") and not self.param:
            raise ValueError(f"{self.kind} pagination needs a param")
        if self.kind == "cursor" and self.cursor_path is None:
            raise ValueError("cursor pagination needs a cursor_path")
        if self.kind == "next_link" and self.next_path is None:
            raise ValueError("next_link pagination needs a next_path")
        return self


class ApiRecipe(_Recipe):
    """A JSON API: every page is ``method endpoint?params&<pagination>``; the items are
    the objects at ``items_path``, each reduced to ``fields``."""

    kind: Literal["api"] = "api"
    format: Literal[1] = RECIPE_FORMAT
    #: absolute URL without query (static parameters are in ``params``)
    endpoint: str = Field(pattern=r"^https?://[^?#]+$")
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, str] = Field(default_factory=dict)
    #: static, non-secret headers (Accept, X-Requested-With...)
    headers: dict[str, str] = Field(default_factory=dict)
    #: the static request body of a POST API (never a secret)
    body: str | None = None
    auth: Auth | None = None
    pagination: Pagination = Pagination(kind="none")
    items_path: JsonPath
    fields: list[str] = Field(min_length=1)
    id_field: str | None = None


class FieldSelector(_Recipe):
    """One field of an item: the first match of ``css`` inside the item ("" is the item
    itself), its whitespace-normalised text, or its attribute ``attr`` when given."""

    css: str = ""
    attr: str | None = None


class DomRecipe(_Recipe):
    """Server-rendered HTML: the elements matching ``item_selector`` are the items;
    ``next_selector`` finds the link to the following page."""

    kind: Literal["dom"] = "dom"
    format: Literal[1] = RECIPE_FORMAT
    start_url: str = Field(pattern=r"^https?://")
    item_selector: str = Field(min_length=1)
    fields: dict[str, FieldSelector] = Field(min_length=1)
    next_selector: str | None = None
    id_field: str | None = None


Recipe = Annotated[ApiRecipe | DomRecipe, Field(discriminator="kind")]

#: validates a stored recipe: ``RECIPE.validate_json(raw)``
RECIPE: TypeAdapter[ApiRecipe | DomRecipe] = TypeAdapter(Recipe)
