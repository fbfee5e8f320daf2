"""Chat text made safe for Markdown documents (the postmortem).

``escape`` makes any text literal inline Markdown: one line, with every character
that could start a heading, list, link, emphasis, autolink, table cell or HTML tag
backslash-escaped. ``code`` shows an identifier verbatim in an inert code span.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

_SPECIAL: Final = frozenset("\\`*_{}[]()<>#+-.!|~:&@$")
"""ASCII punctuation with a meaning in CommonMark, GFM (autolinks, tables, strikethrough)
or the common math extensions; a backslash makes each literal."""
_BIDI: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SPACES: Final = re.compile(r"\s+")


def plain(text: str) -> str:
    """One line of text: control characters and bidi overrides dropped, spaces collapsed."""
    kept = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
        if ch not in _BIDI
    )
    return _SPACES.sub(" ", kept).strip()


def escape(text: str) -> str:
    """``text`` as literal Markdown inline text: no block, link, emphasis or HTML syntax."""
    return "".join(f"\\{ch}" if ch in _SPECIAL else ch for ch in plain(text))


def code(text: str) -> str:
    """``text`` as an inline code span (an identifier, shown verbatim and inert)."""
    value = plain(text)
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or not value else ""
    return f"{fence}{pad}{value}{pad}{fence}"
