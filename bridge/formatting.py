"""One HTML sanitizer for both platforms, and conversions between HTML and plain text.

Everything that crosses the bridge as HTML passes ``sanitize_html``: only the
allow-listed tags and attributes below survive, URLs keep only safe schemes,
the content of dangerous elements (script, style, ...) is dropped, and the
text of every other element is kept. The output is well-formed (every opened
tag is closed) and all text is escaped.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Final

ALLOWED_TAGS: Final = frozenset(
    {
        "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "i", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "u", "ul",
        "table", "thead", "tbody", "tr", "th", "td", "caption", "span", "div",
    }
)  # fmt: skip
RENAMED_TAGS: Final = {"strike": "s", "ins": "u"}
VOID_TAGS: Final = frozenset({"br", "hr"})
DROP_WITH_CONTENT: Final = frozenset(
    {
        "script", "style", "iframe", "object", "embed", "template", "noscript", "title",
        "head", "svg", "math", "textarea", "select", "button", "mx-reply", "frame", "frameset",
        "applet", "noembed", "xmp", "plaintext",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES: Final = {
    "a": frozenset({"href"}),
    "ol": frozenset({"start"}),
    "code": frozenset({"class"}),
}
SAFE_URL_SCHEMES: Final = frozenset({"http", "https", "mailto", "matrix"})
_CODE_CLASS = re.compile(r"^language-[A-Za-z0-9_+-]{1,32}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")
MAX_DEPTH: Final = 100


def _safe_url(value: str) -> str | None:
    compact = _CONTROL.sub("", value)
    match = _SCHEME.match(compact)
    if match is None:
        return None  # relative URLs mean nothing across platforms
    if match.group(1).lower() not in SAFE_URL_SCHEMES:
        return None
    return compact


def _clean_attributes(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    allowed = ALLOWED_ATTRIBUTES.get(tag, frozenset())
    kept: list[str] = []
    for name, raw in attrs:
        if name not in allowed or raw is None:
            continue
        value: str | None = raw
        if name == "href":
            value = _safe_url(raw)
        elif name == "start":
            value = raw if raw.isdigit() and len(raw) < 10 else None
        elif name == "class":
            value = raw if _CODE_CLASS.match(raw) else None
        if value is not None:
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
    return "".join(kept)


class _Sanitizer(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.dropping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = RENAMED_TAGS.get(tag, tag)
        if self.dropping or tag in DROP_WITH_CONTENT:
            if tag not in VOID_TAGS:
                self.dropping.append(tag)
            return
        if tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), None)
            if alt:
                self.out.append(html.escape(alt, quote=False))
            return
        if tag not in ALLOWED_TAGS:
            return
        if tag in VOID_TAGS:
            self.out.append(f"<{tag}>")
            return
        if len(self.open) >= MAX_DEPTH:
            return
        self.out.append(f"<{tag}{_clean_attributes(tag, attrs)}>")
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        tag = RENAMED_TAGS.get(tag, tag)
        if tag in VOID_TAGS or tag == "img":
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        tag = RENAMED_TAGS.get(tag, tag)
        if self.dropping:
            if tag in self.dropping:
                while self.dropping and self.dropping.pop() != tag:
                    pass
            return
        if tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def sanitize_html(source: str) -> str:
    """The allow-listed subset of ``source``: safe to show on either platform."""
    parser = _Sanitizer()
    parser.feed(source.replace("\x00", ""))
    return parser.result()


_BLOCK_BREAKS: Final = frozenset(
    {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote",
     "hr", "ul", "ol", "table"}
)  # fmt: skip


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.dropping = 0
        self.links: list[str | None] = []
        self.quote_depth = 0
        self.at_line_start = True

    def _emit(self, text: str) -> None:
        for i, piece in enumerate(text.split("\n")):
            if i:
                self.parts.append("\n")
                self.at_line_start = True
            if piece:
                if self.at_line_start and self.quote_depth:
                    self.parts.append("> " * self.quote_depth)
                self.parts.append(piece)
                self.at_line_start = False

    def _newline(self) -> None:
        if self.parts and not self.at_line_start:
            self.parts.append("\n")
            self.at_line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROP_WITH_CONTENT:
            self.dropping += 1
            return
        if self.dropping:
            return
        if tag in _BLOCK_BREAKS:
            self._newline()
        if tag == "blockquote":
            self.quote_depth += 1
        elif tag == "li":
            self._emit("- ")
        elif tag == "a":
            href = next((v for k, v in attrs if k == "href"), None)
            self.links.append(_safe_url(href) if href else None)
        elif tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), None)
            if alt:
                self._emit(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in DROP_WITH_CONTENT:
            self.dropping = max(0, self.dropping - 1)
            return
        if self.dropping:
            return
        if tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
        if tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith("mailto:") and href not in "".join(self.parts[-3:]):
                self._emit(f" ({href})")
        if tag in _BLOCK_BREAKS:
            self._newline()

    def handle_data(self, data: str) -> None:
        if not self.dropping:
            self._emit(data)


def html_to_text(source: str) -> str:
    """A readable plain-text rendering of HTML (lists, quotes and links kept legible)."""
    parser = _TextExtractor()
    parser.feed(source.replace("\x00", ""))
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, line breaks kept."""
    return html.escape(text, quote=False).replace("\n", "<br>")
