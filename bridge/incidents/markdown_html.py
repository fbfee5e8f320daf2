"""The postmortem's Markdown as HTML, so chat shows it formatted.

Reads the CommonMark subset the postmortem is written in (``bridge.incidents.postmortem``):
ATX headings; ``-`` list items, nested by two spaces, ``- [ ]`` task items shown with a
box; paragraphs; inline backslash escapes, code spans, ``**strong**`` and ``_emphasis_``.
Anything else is text. Simplified from CommonMark: a line that is not a list item ends
the lists open before it, and delimiter runs other than ``**`` and ``_`` are text.

Every character of the input is escaped on output and the result passes the bridge's
sanitizer (``bridge.formatting.sanitize_html``), so any input gives well-formed HTML in
the allow-listed subset. Time is linear in the input (code spans are matched through
an index of backtick runs, emphasis with one stack).
"""

from __future__ import annotations

import bisect
import html
import re
import string
from dataclasses import dataclass
from typing import Final

from bridge.formatting import sanitize_html

INDENT: Final = 2
"""Spaces per level of a nested list item."""
TASK_BOXES: Final = {" ": "☐", "x": "☑", "X": "☑"}
_HEADING: Final = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")
_ITEM: Final = re.compile(r"^( *)-(?:[ \t]+(.*))?$")
_TASK: Final = re.compile(r"^\[([ xX])\](?:[ \t]+|$)")
_PUNCTUATION: Final = frozenset(string.punctuation)
_STRONG: Final = "**"
_EMPHASIS: Final = "_"
_TAGS: Final = {_STRONG: "strong", _EMPHASIS: "em"}


def markdown_to_html(markdown: str) -> str:
    """``markdown`` (the postmortem's subset) as sanitized HTML."""
    blocks = _Blocks()
    for raw in markdown.split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            blocks.end_paragraph()
        elif (heading := _HEADING.match(line)) is not None:
            blocks.heading(len(heading.group(1)), _heading_text(line[heading.end() :]))
        elif (item := _ITEM.match(line)) is not None:
            blocks.item(len(item.group(1)) // INDENT, item.group(2) or "")
        else:
            blocks.paragraph_line(line.strip())
    return sanitize_html(blocks.result())


class _Blocks:
    """The HTML of the blocks read so far: open lists (each with an open item) and the
    lines of the paragraph being read."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._paragraph: list[str] = []
        self._depth = 0

    def end_paragraph(self) -> None:
        if self._paragraph:
            text = "\n".join(self._paragraph)
            self._out.append(f"<p>{inline_html(text)}</p>")
            self._paragraph = []

    def heading(self, level: int, text: str) -> None:
        self.end_paragraph()
        self._close_lists(0)
        self._out.append(f"<h{level}>{inline_html(text)}</h{level}>")

    def item(self, level: int, text: str) -> None:
        self.end_paragraph()
        depth = min(level, self._depth) + 1  # one level deeper than the open lists at most
        if depth > self._depth:
            self._out.append("<ul><li>")
            self._depth = depth
        else:
            self._close_lists(depth)
            self._out.append("</li><li>")
        task = _TASK.match(text)
        if task is not None:
            text = f"{TASK_BOXES[task.group(1)]} {text[task.end() :]}"
        self._out.append(inline_html(text))

    def paragraph_line(self, text: str) -> None:
        if not self._paragraph:
            self._close_lists(0)
        self._paragraph.append(text)

    def result(self) -> str:
        self.end_paragraph()
        self._close_lists(0)
        return "".join(self._out)

    def _close_lists(self, depth: int) -> None:
        while self._depth > depth:
            self._out.append("</li></ul>")
            self._depth -= 1


@dataclass(frozen=True, slots=True)
class _Delimiter:
    """A ``**`` or ``_`` that may open or close a span."""

    mark: str
    opens: bool
    closes: bool


def inline_html(text: str) -> str:
    """One block's inline Markdown as HTML (escapes, code spans, strong, emphasis)."""
    tokens = _inline_tokens(text)
    tags = _pair(tokens)
    return "".join(
        tags.get(i, html.escape(t.mark)) if isinstance(t, _Delimiter) else t
        for i, t in enumerate(tokens)
    )


def _inline_tokens(text: str) -> list[str | _Delimiter]:
    """HTML pieces (escaped text, code spans) and the delimiters between them."""
    ticks = _BacktickRuns(text)
    tokens: list[str | _Delimiter] = []
    at, end = 0, len(text)
    while at < end:
        ch = text[at]
        if ch == "\\" and at + 1 < end and text[at + 1] in _PUNCTUATION:
            tokens.append(html.escape(text[at + 1], quote=False))
            at += 2
        elif ch == "`":
            run = _run_length(text, at, "`")
            close = ticks.next_of(run, after=at + run)
            if close is None:
                tokens.append("`" * run)
            else:
                tokens.append(f"<code>{html.escape(_code_text(text[at + run : close]))}</code>")
                run += close - at
            at += run
        elif ch in "*_":
            run = _run_length(text, at, ch)
            mark = text[at : at + run]
            before = text[at - 1] if at else " "
            after = text[at + run] if at + run < end else " "
            if mark in _TAGS:
                opens = not after.isspace() and not (ch == "_" and before.isalnum())
                closes = not before.isspace() and not (ch == "_" and after.isalnum())
                tokens.append(_Delimiter(mark=mark, opens=opens, closes=closes))
            else:
                tokens.append(mark)
            at += run
        else:
            stop = _next_special(text, at + 1)
            tokens.append(html.escape(text[at:stop], quote=False))
            at = stop
    return tokens


def _pair(tokens: list[str | _Delimiter]) -> dict[int, str]:
    """The tag of each delimiter that opens or closes a span, by token index.

    A closer pairs with the nearest opener of its mark; openers of the other mark
    between the two stay text.
    """
    tags: dict[int, str] = {}
    openers: dict[str, list[int]] = {mark: [] for mark in _TAGS}
    for index, token in enumerate(tokens):
        if not isinstance(token, _Delimiter):
            continue
        same = openers[token.mark]
        if token.closes and same:
            opener = same.pop()
            for mark, stack in openers.items():
                while mark != token.mark and stack and stack[-1] > opener:
                    stack.pop()
            name = _TAGS[token.mark]
            tags[opener], tags[index] = f"<{name}>", f"</{name}>"
        elif token.opens:
            same.append(index)
    return tags


class _BacktickRuns:
    """Where each run of backticks starts, by its length, to find a code span's end."""

    def __init__(self, text: str) -> None:
        self._starts: dict[int, list[int]] = {}
        at = text.find("`")
        while at != -1:
            run = _run_length(text, at, "`")
            self._starts.setdefault(run, []).append(at)
            at = text.find("`", at + run)

    def next_of(self, length: int, *, after: int) -> int | None:
        """The start of the first run of exactly ``length`` backticks at or after ``after``."""
        starts = self._starts.get(length, [])
        index = bisect.bisect_left(starts, after)
        return starts[index] if index < len(starts) else None


def _heading_text(rest: str) -> str:
    """A heading's text: spaces around it and a closing run of ``#`` dropped."""
    text = rest.strip(" \t")
    stripped = text.rstrip("#")
    if stripped != text and (not stripped or stripped[-1] in " \t"):
        text = stripped.rstrip(" \t")
    return text


def _run_length(text: str, at: int, ch: str) -> int:
    end = at
    while end < len(text) and text[end] == ch:
        end += 1
    return end - at


def _next_special(text: str, start: int) -> int:
    """The position of the next character that may start inline syntax (or the end)."""
    at = start
    while at < len(text) and text[at] not in "\\`*_":
        at += 1
    return at


def _code_text(content: str) -> str:
    """A code span's text: line breaks as spaces, one padding space each side dropped."""
    value = content.replace("\n", " ")
    if len(value) >= 2 and value[0] == value[-1] == " " and value.strip():
        return value[1:-1]
    return value
