"""A linear-time HTML tokenizer: text, start tags and end tags, as browsers split them.

It follows the HTML5 tokenizer where the result differs for a reader:

- comments (ended by ``-->`` or ``--!>``; ``<!-->`` is an empty one), doctypes,
  processing instructions and other bogus comments yield nothing;
- a tag cut off by the end of the input yields nothing (browsers drop it);
- attribute values may hold ``>`` inside quotes; the first of two equal attribute
  names wins; tag and attribute names are lower-cased (ASCII only);
- character references are decoded in text and in attribute values, where a
  legacy reference without ``;`` followed by ``=`` or a letter or digit stays as
  written (``?a=1&copy=2`` is a URL, not a copyright sign);
- the content of raw-text elements (``script``, ``style``, ``textarea``...) is
  one text token up to the matching end tag, even after ``<script/>``;
- inside ``svg`` and ``math`` there are no raw-text elements, ``<x/>`` closes
  itself and ``<![CDATA[...]]>`` is text; an HTML element that browsers refuse in
  foreign content (``<p>``, ``<img>``, ``<b>``...) ends it, and the end tags of the
  foreign elements it leaves are yielded first.

Line breaks are normalised (CRLF and CR become LF); NUL is dropped from text and
reads as U+FFFD in names, attribute values and raw text. Every character is examined a
bounded number of times, so hostile input (thousands of unclosed tags or quotes)
costs time in proportion to its length. Tree building (implied end tags,
misnested formatting) is left to the consumer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html import unescape
from html.entities import html5
from types import MappingProxyType
from typing import Final

FOREIGN_ROOTS: Final = frozenset({"svg", "math"})
RAW_TEXT: Final = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript"})
ESCAPABLE_RAW_TEXT: Final = frozenset({"textarea", "title"})
FOREIGN_BREAKOUT: Final = frozenset(
    {
        "b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em",
        "embed", "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr", "i", "img", "li", "listing",
        "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span", "strong",
        "strike", "sub", "sup", "table", "tt", "u", "ul", "var",
    }
)  # fmt: skip
"""Start tags that end foreign content (``font`` too, with ``color``, ``face`` or ``size``)."""

_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_NAME: Final = re.compile(r"[^\t\n\f />]*")
_SEPARATORS: Final = re.compile(r"[\t\n\f /]*")
_SPACE: Final = re.compile(r"[\t\n\f ]*")
_ATTRIBUTE_NAME: Final = re.compile(r"[^\t\n\f />][^\t\n\f />=]*")
_UNQUOTED: Final = re.compile(r"[^\t\n\f >]*")
_COMMENT_END: Final = re.compile(r"--!?>")
_REFERENCE: Final = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_RAW_END: Final = MappingProxyType(
    {
        name: re.compile(rf"</{name}(?=[\t\n\f />])", re.IGNORECASE)
        for name in (*RAW_TEXT, *ESCAPABLE_RAW_TEXT)
    }
)
_ENTITIES: Final = html5
"""Named character references, with and without ``;`` (the legacy ones)."""
_LONGEST_ENTITY: Final = max(len(name) for name in _ENTITIES)


@dataclass(frozen=True, slots=True)
class Text:
    data: str


@dataclass(frozen=True, slots=True)
class StartTag:
    name: str
    attributes: Mapping[str, str]
    self_closing: bool = False


@dataclass(frozen=True, slots=True)
class EndTag:
    name: str


Token = Text | StartTag | EndTag


def unescape_attribute(value: str) -> str:
    """Character references in an attribute value, decoded as browsers do."""
    if "&" not in value:
        return value
    return _REFERENCE.sub(lambda m: _attribute_reference(m, value), value)


def _attribute_reference(match: re.Match[str], value: str) -> str:
    reference = match.group(1)
    if reference.startswith("#") or reference.endswith(";"):
        return unescape(match.group(0))
    # A named reference without ";": the longest legacy name that prefixes it.
    for end in range(min(len(reference), _LONGEST_ENTITY), 1, -1):
        if reference[:end] in _ENTITIES:
            following = reference[end : end + 1] or value[match.end() : match.end() + 1]
            if following == "=" or following.isalnum():
                return match.group(0)  # "&copy=2" in a URL stays as written
            return _ENTITIES[reference[:end]] + reference[end:]
    return match.group(0)


class _Tokenizer:
    def __init__(self, source: str) -> None:
        self.source = source.replace("\r\n", "\n").replace("\r", "\n")
        self.pos = 0
        self.foreign: list[str] = []
        """The open ``svg`` and ``math`` elements, innermost last."""

    def tokens(self) -> Iterator[Token]:
        source, end = self.source, len(self.source)
        while self.pos < end:
            lt = source.find("<", self.pos)
            if lt < 0:
                yield Text(_text(source[self.pos :]))
                return
            if lt > self.pos:
                yield Text(_text(source[self.pos : lt]))
            self.pos = lt
            yield from self._markup()

    def _markup(self) -> Iterator[Token]:
        source, at = self.source, self.pos
        following = source[at + 1 : at + 2]
        if following == "!":
            yield from self._declaration()
        elif following == "?":
            self._skip_to_gt(at + 2)
        elif following == "/":
            yield from self._end_tag()
        elif following.isascii() and following.isalpha():
            yield from self._start_tag()
        else:
            self.pos = at + 1
            yield Text("<")

    def _declaration(self) -> Iterator[Token]:
        source, at = self.source, self.pos
        if source.startswith("<!--", at):
            if source.startswith(">", at + 4):
                self.pos = at + 5
            elif source.startswith("->", at + 4):
                self.pos = at + 6
            else:
                found = _COMMENT_END.search(source, at + 4)
                self.pos = found.end() if found else len(source)
        elif self.foreign and source.startswith("<![CDATA[", at):
            close = source.find("]]>", at + 9)
            stop = close if close >= 0 else len(source)
            self.pos = stop + 3 if close >= 0 else stop
            if stop > at + 9:
                yield Text(_text(source[at + 9 : stop], decode=False))
        else:
            self._skip_to_gt(at + 2)

    def _skip_to_gt(self, start: int) -> None:
        close = self.source.find(">", start)
        self.pos = close + 1 if close >= 0 else len(self.source)

    def _end_tag(self) -> Iterator[Token]:
        source, at = self.source, self.pos
        first = source[at + 2 : at + 3]
        if not first:
            self.pos = at + 2
            yield Text("</")
        elif first == ">":
            self.pos = at + 3
        elif not (first.isascii() and first.isalpha()):
            self._skip_to_gt(at + 2)
        else:
            parsed = self._tag(at + 2)
            if parsed is not None:
                name = parsed[0]
                if name in self.foreign:
                    while self.foreign.pop() != name:
                        pass
                yield EndTag(name)

    def _start_tag(self) -> Iterator[Token]:
        parsed = self._tag(self.pos + 1)
        if parsed is None:
            return
        name, attributes, self_closing = parsed
        if self.foreign and _breaks_out(name, attributes):
            while self.foreign:
                yield EndTag(self.foreign.pop())
        yield StartTag(name, attributes, self_closing)
        if name in FOREIGN_ROOTS:
            if not self_closing:
                self.foreign.append(name)
        elif self.foreign:
            return  # no raw text in foreign content
        elif name == "plaintext":
            yield Text(_raw(self.source[self.pos :]))
            self.pos = len(self.source)
        elif name in _RAW_END:
            yield from self._raw_text(name)

    def _raw_text(self, name: str) -> Iterator[Token]:
        source = self.source
        found = _RAW_END[name].search(source, self.pos)
        stop = found.start() if found else len(source)
        if stop > self.pos:
            raw = source[self.pos : stop]
            yield Text(unescape(_raw(raw)) if name in ESCAPABLE_RAW_TEXT else _raw(raw))
        self.pos = stop

    def _tag(self, start: int) -> tuple[str, Mapping[str, str], bool] | None:
        """The tag whose name starts at ``start``; None (all consumed) if the input ends first."""
        source, end = self.source, len(self.source)
        pos = _end_of(_NAME, source, start)
        name = _raw(source[start:pos]).translate(_ASCII_LOWER)
        attributes: dict[str, str] = {}
        while True:
            after = _end_of(_SEPARATORS, source, pos)
            if after >= end:
                self.pos = end
                return None
            if source[after] == ">":
                self.pos = after + 1
                self_closing = after > pos and source[after - 1] == "/"
                return name, MappingProxyType(attributes), self_closing
            pos = _end_of(_ATTRIBUTE_NAME, source, after)
            key = _raw(source[after:pos]).translate(_ASCII_LOWER)
            value = ""
            equals = _end_of(_SPACE, source, pos)
            if source.startswith("=", equals):
                pos = _end_of(_SPACE, source, equals + 1)
                quote = source[pos : pos + 1]
                if quote in ('"', "'"):
                    close = source.find(quote, pos + 1)
                    if close < 0:
                        self.pos = end
                        return None
                    value, pos = source[pos + 1 : close], close + 1
                else:
                    value_end = _end_of(_UNQUOTED, source, pos)
                    value, pos = source[pos:value_end], value_end
            if key not in attributes:
                attributes[key] = unescape_attribute(_raw(value))


def _text(data: str, *, decode: bool = True) -> str:
    """Character data: NUL is ignored (as browsers do in text), references decoded."""
    data = data.replace("\x00", "")
    return unescape(data) if decode else data


def _raw(data: str) -> str:
    """Names, attribute values and raw text: NUL reads as U+FFFD."""
    return data.replace("\x00", "\ufffd")


def _end_of(pattern: re.Pattern[str], source: str, pos: int) -> int:
    """Where a match of ``pattern`` at ``pos`` ends (``pos`` itself when nothing matches)."""
    match = pattern.match(source, pos)
    return match.end() if match is not None else pos


def _breaks_out(name: str, attributes: Mapping[str, str]) -> bool:
    if name == "font":
        return any(a in attributes for a in ("color", "face", "size"))
    return name in FOREIGN_BREAKOUT


def tokenize(source: str) -> Iterator[Token]:
    """The tokens of ``source``, in order (see the module documentation)."""
    return _Tokenizer(source).tokens()
