"""One HTML sanitizer for both platforms, and conversions between HTML and plain text.

Everything that crosses the bridge as HTML passes ``sanitize_html``: only the
allow-listed tags and attributes below survive, URLs keep only safe schemes,
the content of dangerous elements (script, style, ...) is dropped, and the
text of every other element is kept. The output is well-formed (every opened
tag is closed, at most ``MAX_DEPTH`` deep) and all text is escaped, so any
parser reads it the same way.

Input is split by ``bridge.html_tokens`` (HTML5 rules, linear time on hostile
input), and the common implied end tags are applied (a block closes an open
paragraph, a list item closes the previous one, a cell the previous cell).
A language named on ``<pre>`` (``class="language-json"``) moves to its ``<code>``.
A ``<span>`` carries nothing the allow-list keeps, so only its text remains; an
``<img>`` becomes its ``alt`` text.

``html_to_text`` renders the same structure as readable plain text: lines for
blocks, ``-`` and ``1.`` for list items (nested ones indented), ``>`` for
quotes, fenced code blocks, ``text (url)`` for links (not for mentions).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from typing import Final

from bridge.html_tokens import FOREIGN_ROOTS, EndTag, StartTag, Text, tokenize

ALLOWED_TAGS: Final = frozenset(
    {
        "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "i", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "u", "ul",
        "table", "thead", "tbody", "tr", "th", "td", "caption", "div",
    }
)  # fmt: skip
RENAMED_TAGS: Final = {"strike": "s", "ins": "u"}
VOID_TAGS: Final = frozenset({"br", "hr"})
VOID_ELEMENTS: Final = frozenset(
    {"area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input",
     "keygen", "link", "meta", "param", "source", "track", "wbr"}
)  # fmt: skip
"""Elements that never have content (their start tag is all there is)."""
DROP_WITH_CONTENT: Final = frozenset(
    {
        "script", "style", "iframe", "object", "embed", "template", "noscript", "title",
        "svg", "math", "textarea", "select", "datalist", "mx-reply", "frame", "applet",
        "noembed", "noframes", "xmp", "plaintext",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES: Final = {
    "a": frozenset({"href"}),
    "ol": frozenset({"start"}),
    "code": frozenset({"class"}),
}
SAFE_URL_SCHEMES: Final = frozenset({"http", "https", "mailto", "matrix"})
MAX_DEPTH: Final = 100
MAX_URL_LENGTH: Final = 4096
HEADINGS: Final = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_CLOSES_PARAGRAPH: Final = frozenset(
    {"p", "div", "ul", "ol", "li", "blockquote", "pre", "table", "hr", *HEADINGS}
)
_PARAGRAPH_SCOPE: Final = frozenset({"table", "td", "th", "caption"})
_LIST_ITEM_SCOPE: Final = frozenset(
    {"ul", "ol", "blockquote", "table", "td", "th", "caption", "pre", *HEADINGS}
)
_TABLE_PARTS: Final = frozenset({"caption", "thead", "tbody", "tr", "th", "td"})
_LANGUAGE: Final = re.compile(r"^language-([A-Za-z0-9_+#.-]{1,32})$")
_NOT_A_LANGUAGE: Final = frozenset({"was-manually-selected"})
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_EDGE_SPACE: Final = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE: Final = re.compile(r"[\t\n\r]")
_PILL_URL: Final = re.compile(r"^https://matrix\.to/#/[@!#]", re.IGNORECASE)

DropRule = Callable[[str, Mapping[str, str]], bool]
"""Elements a caller wants gone with their content, besides the dangerous ones."""


def safe_url(value: str) -> str | None:
    """``value`` if it is an absolute URL with a safe scheme (as browsers read it), else None."""
    url = _TAB_OR_NEWLINE.sub("", value.strip(_EDGE_SPACE))
    if len(url) > MAX_URL_LENGTH:
        return None
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() not in SAFE_URL_SCHEMES:
        return None  # relative URLs mean nothing across platforms
    return url


def code_language(classes: str | None) -> str | None:
    """The language a ``class`` attribute names (``language-python``), if any."""
    for name in (classes or "").split():
        match = _LANGUAGE.match(name)
        if match is not None and match.group(1).lower() not in _NOT_A_LANGUAGE:
            return match.group(1)
    return None


def _clean_attributes(tag: str, attributes: Mapping[str, str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name in ALLOWED_ATTRIBUTES.get(tag, ()):
        raw = attributes.get(name)
        if raw is None:
            continue
        value: str | None = None
        if name == "href":
            value = safe_url(raw)
        elif name == "start":
            digits = raw.strip()
            value = (
                str(int(digits))
                if digits.isascii() and digits.isdigit() and len(digits) < 10
                else None
            )
        elif name == "class":
            language = code_language(raw)
            value = f"language-{language}" if language else None
        if value is not None:
            kept[name] = value
    return kept


class _Tree:
    """The allow-listed elements of a document, balanced, and the text outside dropped ones.

    Subclasses receive ``opened``/``closed``/``void``/``text``/``image`` in document order.
    """

    def __init__(self, drop: DropRule | None) -> None:
        self.open: list[str] = []
        self._drop = drop
        self._dropping: str | None = None
        self._drop_depth = 0
        self._skipped: dict[str, int] = {}
        self._pre_classes = ""

    # -- to implement ----------------------------------------------------------------

    def opened(self, tag: str, attributes: dict[str, str]) -> None: ...
    def closed(self, tag: str) -> None: ...
    def void(self, tag: str) -> None: ...
    def text(self, data: str) -> None: ...
    def image(self, alt: str) -> None: ...

    # -- the walk --------------------------------------------------------------------

    def feed(self, source: str) -> None:
        for token in tokenize(source):
            if isinstance(token, Text):
                if self._dropping is None and token.data:
                    self.text(token.data)
            elif isinstance(token, StartTag):
                self._start(token)
            else:
                self._end(token)
        while self.open:
            self.closed(self.open.pop())

    def _start(self, token: StartTag) -> None:
        tag = RENAMED_TAGS.get(token.name, token.name)
        empty = tag in VOID_ELEMENTS or (token.self_closing and tag in FOREIGN_ROOTS)
        if self._dropping is not None:
            if tag == self._dropping and not empty:
                self._drop_depth += 1
            return
        if tag in DROP_WITH_CONTENT or (
            self._drop is not None and self._drop(tag, token.attributes)
        ):
            if not empty:
                self._dropping, self._drop_depth = tag, 1
            return
        if tag == "img":
            alt = token.attributes.get("alt", "")
            if alt.strip():
                self.image(alt)
            return
        if tag in ALLOWED_TAGS:
            self._open(tag, token)

    def _open(self, tag: str, token: StartTag) -> None:
        """An allowed element starts: implied end tags first, then the element if it may open."""
        self._imply_end_tags(tag)
        if tag in VOID_TAGS:
            self.void(tag)
            return
        attributes = _clean_attributes(tag, token.attributes)
        if tag == "a" and "href" not in attributes:
            return  # a link to nowhere (or somewhere unsafe): its text stays
        if tag in _TABLE_PARTS and "table" not in self.open:
            return
        if len(self.open) >= MAX_DEPTH:
            self._skipped[tag] = self._skipped.get(tag, 0) + 1
            return
        if tag == "code" and "class" not in attributes and self.open and self.open[-1] == "pre":
            language = code_language(self._pre_classes)
            if language:
                attributes["class"] = f"language-{language}"
        if tag == "pre":
            self._pre_classes = token.attributes.get("class", "")
        self.open.append(tag)
        self.opened(tag, attributes)

    def _imply_end_tags(self, tag: str) -> None:
        if tag in _CLOSES_PARAGRAPH:
            self._close_within("p", _PARAGRAPH_SCOPE)
        if tag == "li":
            self._close_within("li", _LIST_ITEM_SCOPE)
        elif tag in HEADINGS and self.open and self.open[-1] in HEADINGS:
            self.closed(self.open.pop())
        elif tag in ("td", "th"):
            self._close_within("td", frozenset({"tr", "table"}))
            self._close_within("th", frozenset({"tr", "table"}))
        elif tag in ("tr", "thead", "tbody"):
            self._close_within("tr", frozenset({"table", "thead", "tbody"}))
            if tag != "tr":
                self._close_within("thead", frozenset({"table"}))
                self._close_within("tbody", frozenset({"table"}))
        elif tag == "a":
            self._close_within("a", frozenset())

    def _close_within(self, tag: str, boundaries: frozenset[str]) -> None:
        """Close the innermost open ``tag`` unless a boundary element is open inside it."""
        for index in range(len(self.open) - 1, -1, -1):
            name = self.open[index]
            if name == tag:
                while len(self.open) > index:
                    self.closed(self.open.pop())
                return
            if name in boundaries:
                return

    def _end(self, token: EndTag) -> None:
        tag = RENAMED_TAGS.get(token.name, token.name)
        if self._dropping is not None:
            if tag == self._dropping:
                self._drop_depth -= 1
                if self._drop_depth == 0:
                    self._dropping = None
            return
        if tag == "br":
            self.void("br")  # browsers read </br> as <br>
            return
        if self._skipped.get(tag):
            self._skipped[tag] -= 1
            return
        if tag in HEADINGS and tag not in self.open:
            tag = next((t for t in reversed(self.open) if t in HEADINGS), tag)
        if tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.closed(top)
            if top == tag:
                return


class _Sanitizer(_Tree):
    def __init__(self, drop: DropRule | None) -> None:
        super().__init__(drop)
        self.out: list[str] = []

    def opened(self, tag: str, attributes: dict[str, str]) -> None:
        rendered = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in attributes.items())
        self.out.append(f"<{tag}{rendered}>")

    def closed(self, tag: str) -> None:
        self.out.append(f"</{tag}>")

    def void(self, tag: str) -> None:
        self.out.append(f"<{tag}>")

    def text(self, data: str) -> None:
        self.out.append(html.escape(data, quote=False))

    def image(self, alt: str) -> None:
        self.text(alt)


def sanitize_html(source: str, *, drop: DropRule | None = None) -> str:
    """The allow-listed subset of ``source``: safe to show on either platform.

    ``drop(tag, attributes)`` names further elements to remove with their content.
    """
    sanitizer = _Sanitizer(drop)
    sanitizer.feed(source)
    return "".join(sanitizer.out)


# -- plain text ---------------------------------------------------------------------

_BLOCKS: Final = frozenset(
    {"p", "div", "li", "tr", "pre", "blockquote", "ul", "ol", "table", "caption", *HEADINGS}
)
_WHITESPACE: Final = re.compile(r"[ \t\n\f\r\xa0]+")


class _TextRenderer(_Tree):
    def __init__(self) -> None:
        super().__init__(None)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.prefix = ""
        self.space = False
        """A space is due before the next word on this line."""
        self.quotes = 0
        self.lists: list[list[int]] = []
        """Per open list: ``[next number]`` for ``ol``, ``[]`` for ``ul``."""
        self.marker = ""
        self.links: list[tuple[str, list[str]]] = []
        self.cells = 0
        self.fence: str | None = None
        """The opening fence of a code block, until its first line is written."""
        self.blank = False
        """The line so far holds only no-break spaces: a blank line if a paragraph ends."""

    # -- lines -----------------------------------------------------------------------

    def _put(self, piece: str) -> None:
        if not self.line:
            self.prefix = "> " * self.quotes + "  " * max(0, len(self.lists) - 1)
            if self.marker:
                self.prefix += self.marker
                self.marker = ""
            elif self.lists and "li" in self.open:
                self.prefix += "  "
        elif self.space:
            self.line.append(" ")
        self.space = self.blank = False
        self.line.append(piece)
        for _, collected in self.links:
            collected.append(piece)

    def _end_line(self, *, hard: bool = False) -> None:
        if self.line:
            self.lines.append((self.prefix + "".join(self.line)).rstrip())
        elif hard:
            self.lines.append(("> " * self.quotes).rstrip())
        self.line, self.space = [], False

    def _open_fence(self) -> None:
        if self.fence is not None:
            self._put(self.fence)
            self._end_line()
            self.fence = None

    # -- the structure ---------------------------------------------------------------

    def opened(self, tag: str, attributes: dict[str, str]) -> None:
        if tag in _BLOCKS:
            self._end_line()
            self.blank = False
        if tag == "blockquote":
            self.quotes += 1
        elif tag == "ul":
            self.lists.append([])
        elif tag == "ol":
            self.lists.append([int(attributes.get("start", "1"))])
        elif tag == "li":
            counter = self.lists[-1] if self.lists else []
            self.marker = f"{counter[0]}. " if counter else "- "
            if counter:
                counter[0] += 1
        elif tag == "pre":
            self.fence = "```"
        elif tag == "code" and self.fence == "```":
            self.fence += code_language(attributes.get("class")) or ""
        elif tag == "a":
            self.links.append((attributes["href"], []))
        elif tag == "tr":
            self.cells = 0
        elif tag in ("td", "th"):
            if self.cells:
                self.space = True
                self._put("|")
                self.space = True
            self.cells += 1

    def closed(self, tag: str) -> None:
        if tag == "pre":
            self._open_fence()
            self._end_line()
            self._put("```")
        elif tag == "blockquote":
            self._end_line()
            self.quotes = max(0, self.quotes - 1)
        elif tag in ("ul", "ol"):
            self._end_line()
            if self.lists:
                self.lists.pop()
        elif tag == "li":
            self.marker = ""
        elif tag == "p" and self.blank and not self.line:
            self._end_line(hard=True)  # <p>&nbsp;</p>: how Teams writes an empty line
        elif tag == "a" and self.links:
            href, collected = self.links.pop()
            if _shows_url(href, "".join(collected).strip()):
                self.space = True
                self._put(f"({href})")
        if tag in _BLOCKS:
            self._end_line()

    def void(self, tag: str) -> None:
        if tag == "br":
            self._open_fence()
            self._end_line(hard=True)
        else:  # hr
            self._end_line()
            self._put("---")
            self._end_line()

    def text(self, data: str) -> None:
        if "pre" in self.open:
            self._open_fence()
            for index, piece in enumerate(data.replace("\xa0", " ").split("\n")):
                if index:
                    self._end_line(hard=True)
                if piece:
                    self._put(piece)
            return
        if not self.line and "\xa0" in data and not data.strip(" \t\n\f\r\xa0"):
            self.blank = True
        for index, word in enumerate(_WHITESPACE.split(data)):
            if index:
                self.space = self.space or bool(self.line)
            if word:
                self._put(word)

    def image(self, alt: str) -> None:
        self.text(alt)

    def result(self) -> str:
        self._end_line()
        text = "\n".join(self.lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _shows_url(href: str, label: str) -> bool:
    if href.lower().startswith("mailto:") or _PILL_URL.match(href):
        return False
    bare = re.sub(r"^[a-z]+://", "", href, flags=re.IGNORECASE).rstrip("/")
    return label not in (href, bare, bare + "/")


def html_to_text(source: str) -> str:
    """A readable plain-text rendering of HTML (lists, quotes, code and links kept legible)."""
    renderer = _TextRenderer()
    renderer.feed(source)
    return renderer.result()


def text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, line breaks kept."""
    return html.escape(text, quote=False).replace("\n", "<br>")
