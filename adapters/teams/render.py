"""Bridged messages as Teams activities: attribution, mentions, size limits.

A bot cannot post as a user, so every line names its author and platform:
``<b>Alice</b> <i>(Matrix)</i>: text`` in Teams HTML (``textFormat: xml``).
An edit is rendered the same way, so the updated activity looks like the
original. Mentions of Teams users become real mentions: ``<at>Name</at>`` in
the text plus a ``mention`` entity naming the user's AAD object id. Images Teams
can fetch (https; plain http only on loopback) go as activity attachments
(``contentType`` image/..., ``contentUrl``), which Teams shows in the message;
other files are links in the text.

Sizes are measured on the JSON the connector receives. An activity must stay
under ``max_bytes`` (80 KB by default; Teams refuses about 100 KB with 413):
a longer message is split into parts at element boundaries, each part a
balanced HTML fragment with its own attribution ("part 2 of 3").
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from bridge.config.teams import is_loopback_host
from bridge.formatting import html_to_text, sanitize_html, text_to_html
from bridge.model import Attachment, Body, MessageStyle, Platform, Sender, TimelineEvent

PLATFORM_LABELS: Final = {
    Platform.MATRIX: "Matrix",
    Platform.TEAMS: "Teams",
    Platform.BRIDGE: "bridge",
}
LINE_SEPARATOR: Final = "<br>"
"""Between the lines of a coalesced activity."""
_TAG: Final = re.compile(r"(<[^>]*>)")
_TAG_NAME: Final = re.compile(r"^</?\s*([A-Za-z0-9-]+)")
_VOID: Final = frozenset({"br", "hr"})
_NO_MENTION_INSIDE: Final = frozenset({"a", "code", "pre", "at"})
_REPLY_ID_RESERVE: Final = "x" * 96
"""Room kept in the size budget for a ``replyToId``."""
_PART_RESERVE: Final = (999, 999)
_MIN_TEXT_BUDGET: Final = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Mention:
    """A Teams user mentioned in a message."""

    user_id: str
    """The AAD object id (or a ``29:`` id) Teams resolves the mention with."""
    name: str

    @property
    def text(self) -> str:
        return f"<at>{html.escape(self.name, quote=False)}</at>"

    def entity(self) -> dict[str, Any]:
        return {
            "type": "mention",
            "text": self.text,
            "mentioned": {"id": self.user_id, "name": self.name},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaAttachment:
    """An image shown in the message: Teams fetches it from ``content_url``."""

    content_type: str
    content_url: str
    name: str

    def payload(self) -> dict[str, Any]:
        return {"contentType": self.content_type, "contentUrl": self.content_url, "name": self.name}


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """One message rendered for Teams: who wrote it, and what (Teams HTML)."""

    author: str
    """The author's display name, HTML-escaped."""
    platform: str
    body: str
    mentions: tuple[Mention, ...] = ()
    emote: bool = False
    attachments: tuple[MediaAttachment, ...] = ()

    def header(self, part: int = 1, total: int = 1) -> str:
        label = self.platform if total == 1 else f"{self.platform}, part {part} of {total}"
        if self.emote:
            return f"* <b>{self.author}</b> <i>({label})</i> "
        return f"<b>{self.author}</b> <i>({label})</i>: "

    @property
    def html(self) -> str:
        return self.header() + self.body

    def content(self) -> Content:
        return Content(html=self.html, mentions=self.mentions, attachments=self.attachments)


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """The text, mention entities and images of one activity."""

    html: str
    mentions: tuple[Mention, ...] = ()
    attachments: tuple[MediaAttachment, ...] = ()


def render(event: TimelineEvent) -> Line:
    """A timeline event (a message or the new content of an edit) as one attributed line."""
    sender = event.sender
    body = event.body
    source = teams_markup(sanitize_html(body.html)) if body.html else text_to_html(body.text)
    mentions = _teams_mentions(body.mentions)
    source = _insert_mentions(source, mentions)
    images = tuple(m for a in body.attachments if (m := media_attachment(a)) is not None)
    if _only_names_its_file(body):
        source = ""  # a Matrix file or image event: its text is the file name
    attachments = "".join(_attachment(a) for a in body.attachments if media_attachment(a) is None)
    if attachments:
        source = f"{source}{attachments}" if source else attachments.removeprefix(LINE_SEPARATOR)
    return Line(
        author=html.escape(sender.display_name or sender.user_id, quote=False),
        platform=PLATFORM_LABELS.get(sender.platform, sender.platform.value),
        body=source,
        mentions=mentions,
        emote=body.style is MessageStyle.EMOTE,
        attachments=images,
    )


def media_attachment(attachment: Attachment) -> MediaAttachment | None:
    """An image Teams can fetch itself, as an activity attachment (None for the rest)."""
    mime = attachment.mime_type
    if not (attachment.is_image or mime.startswith("image/")) or not fetchable(attachment.url):
        return None
    return MediaAttachment(
        content_type=mime if mime.startswith("image/") else "image/*",
        content_url=attachment.url,
        name=attachment.name or "image",
    )


def fetchable(url: str) -> bool:
    """Whether Teams can fetch ``url``: https (plain http only on loopback, for tests)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and is_loopback_host(parts.hostname)


def _only_names_its_file(body: Body) -> bool:
    return (
        len(body.attachments) == 1
        and body.html is None
        and body.text.strip() == body.attachments[0].name.strip()
    )


def activity(content: Content, *, reply_to: str | None = None) -> dict[str, Any]:
    """The connector's message activity for ``content``."""
    payload: dict[str, Any] = {"type": "message", "textFormat": "xml", "text": content.html}
    if content.mentions:
        payload["entities"] = [m.entity() for m in content.mentions]
    if content.attachments:
        payload["attachments"] = [a.payload() for a in content.attachments]
    if reply_to is not None:
        payload["replyToId"] = reply_to
    return payload


def serialize(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent: compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def activity_size(content: Content) -> int:
    """The size of ``content``'s activity as sent, with room for a ``replyToId``."""
    return len(serialize(activity(content, reply_to=_REPLY_ID_RESERVE)))


def combine(lines: Sequence[Line]) -> Content:
    """Several lines as one activity, in order, each keeping its attribution."""
    mentions: dict[str, Mention] = {}
    for line in lines:
        for mention in line.mentions:
            mentions.setdefault(mention.user_id, mention)
    return Content(
        html=LINE_SEPARATOR.join(line.html for line in lines),
        mentions=tuple(mentions.values()),
        attachments=tuple(a for line in lines for a in line.attachments),
    )


def split(line: Line, *, max_bytes: int) -> list[Content]:
    """``line`` as one or more activities, each under ``max_bytes``, in reading order."""
    whole = line.content()
    if activity_size(whole) <= max_bytes:
        return [whole]
    reserve = activity_size(Content(html=line.header(*_PART_RESERVE), mentions=line.mentions))
    budget = max(_MIN_TEXT_BUDGET, max_bytes - reserve)
    pieces = _pieces(line.body, budget)
    total = len(pieces)
    return [
        Content(
            html=line.header(index, total) + piece,
            mentions=tuple(m for m in line.mentions if m.text in piece),
            attachments=line.attachments if index == 1 else (),
        )
        for index, piece in enumerate(pieces, start=1)
    ]


def truncate(line: Line, *, max_bytes: int, parts: int) -> list[Content]:
    """At most ``parts`` activities for ``line``; what does not fit is cut off, visibly."""
    contents = split(line, max_bytes=max_bytes)
    if len(contents) <= parts:
        return contents
    marker = " <i>(truncated: the edit is too long)</i>"
    kept = split(line, max_bytes=max_bytes - encoded_size(marker))[: max(1, parts)]
    last = kept[-1]
    kept[-1] = Content(
        html=last.html + marker, mentions=last.mentions, attachments=last.attachments
    )
    return kept


# -- formatting ---------------------------------------------------------------------

TEAMS_TAGS: Final = {"s": "strike", "del": "strike", "h4": "h3", "h5": "h3", "h6": "h3"}
"""Tags Teams does not render, as the documented tags that mean the same."""
_SPACE_RUN: Final = re.compile(r" {2,}")
_BREAK_BEFORE_PRE_END: Final = re.compile(r"<br>((?:</code>)?</pre>)")


def teams_markup(source: str) -> str:
    """Sanitized HTML in the subset Teams renders.

    ``<strike>`` for ``<s>`` and ``<del>``; headings at most ``<h3>``. Teams collapses
    white space inside ``<pre>``, so a code block's line breaks become ``<br>`` and its
    leading and repeated spaces no-break spaces.
    """
    out: list[str] = []
    in_pre = 0
    for token in _TAG.split(source):
        written = token
        if token.startswith("<"):
            name = _tag_name(token)
            if name == "pre":
                in_pre += -1 if token.startswith("</") else 1
            renamed = TEAMS_TAGS.get(name)
            if renamed is not None:
                written = token.replace(name, renamed, 1)
        elif in_pre > 0 and token:
            written = LINE_SEPARATOR.join(_keep_spaces(line) for line in token.split("\n"))
        out.append(written)
    return _BREAK_BEFORE_PRE_END.sub(r"\1", "".join(out))


def _keep_spaces(line: str) -> str:
    rest = line.lstrip(" ")
    lead = "&nbsp;" * (len(line) - len(rest))
    return lead + _SPACE_RUN.sub(lambda m: " " + "&nbsp;" * (len(m.group()) - 1), rest)


# -- mentions -----------------------------------------------------------------------


def _teams_mentions(senders: Iterable[Sender]) -> tuple[Mention, ...]:
    seen: dict[str, Mention] = {}
    for sender in senders:
        if sender.platform is Platform.TEAMS and sender.user_id not in seen:
            name = sender.display_name or "user"
            seen[sender.user_id] = Mention(user_id=sender.user_id, name=name)
    return tuple(seen.values())


def _insert_mentions(source: str, mentions: Sequence[Mention]) -> str:
    """Turn each mention's name in ``source`` into ``<at>name</at>``; append it when absent."""
    for mention in mentions:
        tokens = _TAG.split(source)
        name = html.escape(mention.name, quote=False)
        if not (_replace_pill(tokens, name, mention.text) or _replace_name(tokens, name, mention)):
            tokens.append(f" {mention.text}" if source else mention.text)
        source = "".join(tokens)
    return source


def _replace_pill(tokens: list[str], name: str, at: str) -> bool:
    """A link whose whole text is the name (a Matrix pill) becomes the mention."""
    for i in range(len(tokens) - 2):
        if (
            _tag_name(tokens[i]) == "a"
            and not tokens[i].startswith("</")
            and tokens[i + 1].lstrip("@") == name
            and tokens[i + 2] == "</a>"
        ):
            tokens[i : i + 3] = [at, "", ""]
            return True
    return False


def _replace_name(tokens: list[str], name: str, mention: Mention) -> bool:
    """The first plain-text occurrence of the name (with an optional ``@``) becomes the mention."""
    pattern = re.compile(r"(?<!\w)@?" + re.escape(name) + r"(?!\w)")
    blocked = 0
    for i, token in enumerate(tokens):
        if token.startswith("<"):
            tag = _tag_name(token)
            if tag in _NO_MENTION_INSIDE:
                blocked += -1 if token.startswith("</") else 1
            continue
        if blocked > 0:
            continue
        match = pattern.search(token)
        if match:
            tokens[i] = token[: match.start()] + mention.text + token[match.end() :]
            return True
    return False


def _tag_name(token: str) -> str:
    match = _TAG_NAME.match(token)
    return match.group(1).lower() if match else ""


def _attachment(attachment: Attachment) -> str:
    name = html.escape(attachment.name or "attachment", quote=False)
    if fetchable(attachment.url):
        href = html.escape(attachment.url, quote=True)
        return f'{LINE_SEPARATOR}<a href="{href}">[file] {name}</a>'
    return f"{LINE_SEPARATOR}[file] {name}"


# -- splitting ----------------------------------------------------------------------


def encoded_size(fragment: str) -> int:
    """The bytes ``fragment`` takes inside a JSON string (escaping is per character)."""
    return len(json.dumps(fragment, ensure_ascii=False).encode("utf-8")) - 2


def _units(fragment: str) -> list[str]:
    """The top-level pieces of balanced HTML: text runs, void tags and whole elements."""
    units: list[str] = []
    current: list[str] = []
    depth = 0
    for token in _TAG.split(fragment):
        if not token:
            continue
        if token.startswith("</"):
            if depth == 0:
                continue  # a stray end tag: dropped
            depth -= 1
        elif token.startswith("<") and not _is_void(token):
            depth += 1
        elif depth == 0:  # text or a void tag at the top level
            units.append(token)
            continue
        current.append(token)
        if depth == 0:
            units.append("".join(current))
            current = []
    if current:
        units.append("".join(current) + "".join(f"</{t}>" for t in _open_tags(current)))
    return units


def _is_void(token: str) -> bool:
    return _tag_name(token) in _VOID or token.endswith("/>")


def _open_tags(tokens: Sequence[str]) -> list[str]:
    stack: list[str] = []
    for token in tokens:
        if not token.startswith("<"):
            continue
        tag = _tag_name(token)
        if token.startswith("</"):
            if stack and stack[-1] == tag:
                stack.pop()
        elif not _is_void(token):
            stack.append(tag)
    return list(reversed(stack))


def _pieces(fragment: str, budget: int) -> list[str]:
    """``fragment`` as balanced pieces of at most ``budget`` encoded bytes each, in order."""
    pieces: list[str] = []
    current = ""
    size = 0
    for unit in _units(fragment):
        unit_size = encoded_size(unit)
        if unit_size > budget:
            if current:
                pieces.append(current)
            *whole, current = _split_unit(unit, budget)
            pieces.extend(whole)
            size = encoded_size(current)  # the rest of the unit may share its piece
            continue
        if size + unit_size > budget:
            pieces.append(current)
            current, size = "", 0
        current += unit
        size += unit_size
    if current:
        pieces.append(current)
    return pieces


def _split_unit(unit: str, budget: int) -> list[str]:
    if not unit.startswith("<"):
        return _split_text(unit, budget)
    tokens = [t for t in _TAG.split(unit) if t]
    open_tag, close_tag = tokens[0], tokens[-1]
    inner = "".join(tokens[1:-1])
    inner_budget = budget - encoded_size(open_tag) - encoded_size(close_tag)
    if inner_budget < _MIN_TEXT_BUDGET // 2:
        return _split_text(text_to_html(html_to_text(unit)), budget) or [""]
    return [open_tag + piece + close_tag for piece in _pieces(inner, inner_budget)] or [""]


def _split_text(text: str, budget: int) -> list[str]:
    """Escaped text in pieces, cut after whitespace when possible, never inside an entity."""
    pieces: list[str] = []
    while text and encoded_size(text) > budget:
        cut = _cut_point(text, budget)
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def _cut_point(text: str, budget: int) -> int:
    low, high = 1, len(text)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if encoded_size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    cut = low
    space = max(text.rfind(" ", cut // 2, cut), text.rfind("\n", cut // 2, cut))
    if space > 0:
        cut = space + 1
    entity = text.rfind("&", 0, cut)
    if entity > text.rfind(";", 0, cut) and entity > 0:
        cut = entity  # do not cut "&amp;" in two
    return max(1, cut)
