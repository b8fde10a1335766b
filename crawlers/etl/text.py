"""Text normalisation: markup out, one Unicode form, one space between words.

Scraped text arrives with HTML tags and entities, non-breaking and zero-width
spaces, full-width digits and letters, ligatures: the same title written three
ways would hash, dedup and embed as three. :func:`normalize_text` gives one
spelling (NFKC, controls and invisible characters out, whitespace collapsed);
:func:`strip_html` takes markup out with the standard library's HTML parser,
which knows entities, comments and ``<script>`` better than a regex would.
:func:`key_text` is the comparison form behind content keys: case-folded
words, punctuation and stop words out.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Collection
from html.parser import HTMLParser

#: elements whose text is not part of the page's text
_SKIPPED = frozenset({"script", "style", "template", "noscript", "head", "title"})
#: elements that separate words (``<p>a</p><p>b</p>`` is "a b", not "ab")
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "figcaption", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
        "li", "main", "nav", "ol", "option", "p", "pre", "section", "table", "td",
        "th", "tr", "ul",
    }
)  # fmt: skip
#: marks NFKC would spell out and glue to the word before ("iPhone™" -> "iPhoneTM")
_MARKS = str.maketrans("", "", "\u2122\u00ae\u2120")
#: C0/C1 controls other than whitespace, and invisible format characters (soft
#: hyphen, zero-width spaces and joiners, directional marks, BOM)
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)
_SPACES = re.compile(r"\s+")
#: what separates words in key text: anything but letters and digits
_NON_WORD = re.compile(r"[\W_]+")


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag in _BLOCKS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """The text of an HTML fragment: tags, comments and scripts out, entities decoded.

    Text without ``<`` is only unescaped (``AT&amp;T`` -> ``AT&T``), so the parser
    runs only where there may be markup. A ``<`` that starts no tag (``a < b``) is
    kept, as the parser does.
    """
    if "<" not in text:
        return html.unescape(text) if "&" in text else text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def normalize_text(text: str) -> str:
    """NFKC, invisible characters out, every run of whitespace one space, trimmed.

    Idempotent: normalising normalised text changes nothing.
    """
    # invisibles out first: NFKC must see the characters they separated side by side
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text.translate(_MARKS)))
    return _SPACES.sub(" ", text).strip()


def key_text(text: str, stop_words: Collection[str] = ()) -> str:
    """The form two texts are compared in: case-folded words without punctuation
    or stop words (``"The iPhone 15 — Red!"`` -> ``"iphone 15 red"``)."""
    words = _NON_WORD.sub(" ", normalize_text(text).casefold()).split()
    return " ".join(word for word in words if word not in stop_words)
