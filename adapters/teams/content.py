"""A Teams message's content as a core ``Body``: text, sanitized HTML, mentions, attachments.

- The HTML form is the ``text/html`` attachment Teams adds, else ``text`` when its
  format is ``xml`` or it carries ``<at>`` mention tags; otherwise ``text`` is plain.
  HTML goes through ``bridge.formatting.sanitize_html`` (the stored ``html``), and
  the stored ``text`` is ``html_to_text`` of that. Teams-only markup goes first:
  the empty paragraph Teams puts before a code block (``itemtype=".../CodeBlockEditor"``)
  and inline images that became attachments. Inside a code block, ``<br>`` becomes a
  line break and a no-break space a space (the language Teams names on ``<pre>``
  moves to ``<code>``, as Matrix has it). Emoji (``<img itemtype=".../Emoji"
  alt="...">``) stay in the text as their character. Mention spans
  (``itemtype=".../Mention"``) keep only their text.
- A quoted reply (``<blockquote itemtype="http://schema.skype.com/Reply" itemid=...>``)
  becomes a reply relation and is removed from the body (no reply fallbacks).
- A leading mention of the bot (how a channel message addresses it) is removed
  from the body and noted as ``addressed_to_bot``; a mention of the bot later in
  the text stays.
- ``mention`` entities become ``Body.mentions`` (users only; the bot itself and
  tag, channel or team mentions are left out). A mentioned user is identified by
  the AAD object id when the entity carries one, else by the ``29:`` id.
- Images (``image/*`` attachments and inline ``<img>``) and files (Teams file
  download info, SharePoint references) become ``Attachment`` metadata. Only https
  URLs are kept (http only towards a loopback host: a local emulator); whoever
  downloads one still checks its host. A file's pre-authenticated ``downloadUrl``
  is never stored: it is a credential; ``contentUrl`` is kept instead. Cards are
  not converted.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, Final
from urllib.parse import urlsplit

from adapters.teams.activity import JSON, TeamsActivity
from adapters.teams.ids import TeamsActivityID
from bridge.config.teams import is_loopback_host
from bridge.formatting import html_to_text, sanitize_html
from bridge.model import Attachment, Body, Platform, RemoteUserID, Sender

HTML_CONTENT_TYPE = "text/html"
FILE_DOWNLOAD_INFO = "application/vnd.microsoft.teams.file.download.info"
REFERENCE = "reference"
MAX_ATTACHMENTS = 32

_BLOCKQUOTE_START = re.compile(r"<blockquote\b(?P<attrs>[^<>]*+)>", re.IGNORECASE)
"""A blockquote start tag; each try stops at the next ``<``, so a search is linear."""
_BLOCKQUOTE_END = re.compile(r"</blockquote\s*>", re.IGNORECASE)
_REPLY_TYPE = re.compile(r"\bitemtype\s*=\s*[\"']http://schema\.skype\.com/Reply[\"']", re.I)
_ITEM_ID = re.compile(r"\bitemid\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_AT_TAG = re.compile(r"<at\b", re.IGNORECASE)
_SPACE = "&nbsp;|&#160;|&#xa0;|\xa0"
_MENTION_TYPE = r"itemtype\s*=\s*[\"']http://schema\.skype\.com/Mention[\"']"
_TAG: Final = re.compile(r"(<[^>]*>)")
"""Splits sanitized HTML (whose text holds no ``<``) into tags and text."""
CODE_BLOCK_MARKER: Final = "http://schema.skype.com/CodeBlockEditor"
EMOJI_ITEMTYPE: Final = "http://schema.skype.com/Emoji"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageContent:
    body: Body
    quoted: TeamsActivityID | None
    """The message a quoted reply answers, if the message quotes one."""
    addressed_to_bot: bool = False
    """The message began with a mention of the bot (removed from the body)."""


def teams_sender(account_id: str, aad_object_id: str | None, name: str) -> Sender:
    """A Teams user as the core knows it: keyed on the AAD object id when there is one."""
    return Sender(
        platform=Platform.TEAMS,
        user_id=RemoteUserID(aad_object_id or account_id),
        display_name=name,
    )


def message_content(activity: TeamsActivity, *, bot_ids: frozenset[str]) -> MessageContent:
    """The body of a message (or of the new version of an edited one)."""
    html = html_source(activity)
    quoted: TeamsActivityID | None = None
    addressed = False
    inline_images: list[Attachment] = []
    if html is not None:
        html, quoted = _strip_reply_quote(html)
        html, addressed = _strip_leading_bot_mention(html, _bot_names(activity.entities, bot_ids))
        clean, inline_images = _teams_html(html)
        text = html_to_text(clean)
        body_html = clean if text else None
    else:
        text = (activity.text or "").strip()
        body_html = None
    attachments = _dedupe([*_attachments(activity.attachments), *inline_images])
    return MessageContent(
        body=Body(
            text=text,
            html=body_html,
            mentions=tuple(_mentions(activity.entities, bot_ids)),
            attachments=tuple(attachments[:MAX_ATTACHMENTS]),
        ),
        quoted=quoted,
        addressed_to_bot=addressed,
    )


def html_source(activity: TeamsActivity) -> str | None:
    for attachment in activity.attachments:
        if attachment.get("contentType") == HTML_CONTENT_TYPE:
            content = attachment.get("content")
            if isinstance(content, str):
                return content
    text = activity.text
    if text is not None and (activity.text_format == "xml" or _AT_TAG.search(text)):
        return text
    return None


def _teams_html(source: str) -> tuple[str, list[Attachment]]:
    """Teams message HTML sanitized, without Teams-only markup; the images it shows.

    The images are read in the sanitizer's own walk, so an image inside dropped
    content (``<template>``, ``<svg>``...) is no attachment either.
    """
    images: list[Attachment] = []

    def teams_only(tag: str, attributes: Mapping[str, str]) -> bool:
        if tag == "p":
            return attributes.get("itemtype") == CODE_BLOCK_MARKER
        if tag != "img":
            return False
        image = _inline_image(attributes)
        if image is None:
            return False  # an emoji, or nothing fetchable: its alt text stays
        if len(images) < MAX_ATTACHMENTS:
            images.append(image)
        return True

    clean = sanitize_html(source, drop=teams_only).strip()
    return _plain_code_blocks(clean), images


def _plain_code_blocks(clean: str) -> str:
    """Teams writes a code block's lines with ``<br>`` and its spaces as no-break spaces."""
    out: list[str] = []
    in_pre = 0
    for piece in _TAG.split(clean):
        if piece in ("<pre>", "</pre>"):
            in_pre += 1 if piece == "<pre>" else -1
        if in_pre > 0 and piece == "<br>":
            out.append("\n")
        elif in_pre > 0 and not piece.startswith("<"):
            out.append(piece.replace("\xa0", " "))
        else:
            out.append(piece)
    return "".join(out)


def _strip_reply_quote(html: str) -> tuple[str, TeamsActivityID | None]:
    """Remove the first quoted-reply blockquote; the id of the message it quotes."""
    for match in _BLOCKQUOTE_START.finditer(html):
        attrs = match.group("attrs")
        if _REPLY_TYPE.search(attrs) is None:
            continue
        end = _BLOCKQUOTE_END.search(html, match.end())
        item = _ITEM_ID.search(attrs)
        quoted = TeamsActivityID(item.group(1)) if item else None
        return html[: match.start()] + (html[end.end() :] if end else ""), quoted
    return html, None


def _bot_names(entities: Iterable[JSON], bot_ids: frozenset[str]) -> list[str]:
    names: list[str] = []
    for entity in entities:
        mentioned = entity.get("mentioned") if entity.get("type") == "mention" else None
        if isinstance(mentioned, dict) and mentioned.get("id") in bot_ids:
            name = mentioned.get("name")
            if isinstance(name, str) and name.strip():
                names.append(name.strip())
    return names


def _strip_leading_bot_mention(html: str, names: Iterable[str]) -> tuple[str, bool]:
    """Remove a mention of the bot that opens the message: ``<at>Name</at>`` in ``text``,
    ``<span itemtype="http://schema.skype.com/Mention" ...>Name</span>`` in Teams' HTML."""
    for name in names:
        spelled = "|".join(re.escape(n) for n in {name, escape(name, quote=False)})
        stripped, count = _leading_mention(spelled).subn(r"\g<lead>", html, count=1)
        if count:
            return stripped, True
    return html, False


def _leading_mention(spelled: str) -> re.Pattern[str]:
    return re.compile(
        rf"^(?P<lead>(?:\s|{_SPACE}|<(?!/?at\b)(?![^>]*{_MENTION_TYPE})[^>]*>)*)"
        rf"(?:<at\b[^>]*>\s*(?:{spelled})\s*</at>"
        rf"|<span\b[^>]*{_MENTION_TYPE}[^>]*>\s*(?:{spelled})\s*</span>)"
        rf"(?:\s|{_SPACE})*",
        re.IGNORECASE,
    )


def _mentions(entities: Iterable[JSON], bot_ids: frozenset[str]) -> list[Sender]:
    seen: set[str] = set()
    mentions: list[Sender] = []
    for entity in entities:
        if entity.get("type") != "mention":
            continue
        mentioned = entity.get("mentioned")
        if not isinstance(mentioned, dict):
            continue
        account_id = mentioned.get("id")
        if not isinstance(account_id, str) or account_id in bot_ids:
            continue
        aad = mentioned.get("aadObjectId")
        aad = aad if isinstance(aad, str) and aad else None
        if aad is None and not account_id.startswith("29:"):
            continue  # a tag, channel or team mention, or another bot
        name = mentioned.get("name")
        sender = teams_sender(account_id, aad, name if isinstance(name, str) else "")
        if sender.user_id not in seen:
            seen.add(sender.user_id)
            mentions.append(sender)
    return mentions


def _attachments(entries: Iterable[JSON]) -> list[Attachment]:
    result: list[Attachment] = []
    for entry in entries:
        attachment = _attachment(entry)
        if attachment is not None:
            result.append(attachment)
    return result


def _attachment(entry: JSON) -> Attachment | None:
    content_type = _str(entry.get("contentType"))
    name = _str(entry.get("name"))
    url = _https(entry.get("contentUrl"))
    if content_type is None or url is None:
        return None
    if content_type.startswith("image/"):
        return Attachment(
            name=name or "image",
            mime_type=content_type if content_type != "image/*" else _guess(name, "image/*"),
            url=url,
            is_image=True,
        )
    if content_type in (FILE_DOWNLOAD_INFO, REFERENCE):
        return Attachment(
            name=name or "file", mime_type=_guess(name, "application/octet-stream"), url=url
        )
    if content_type.startswith(("application/vnd.microsoft.", "text/")) or "/" not in content_type:
        return None  # cards, and the HTML or markdown twin of the text
    return Attachment(name=name or "file", mime_type=content_type, url=url)


def _inline_image(attributes: Mapping[str, str]) -> Attachment | None:
    """An image shown in the message (not an emoji) as an attachment, if Teams serves it."""
    url = _https(attributes.get("src"))
    if url is None or attributes.get("itemtype") == EMOJI_ITEMTYPE:
        return None
    alt = attributes.get("alt", "").strip()
    return Attachment(
        name=alt or "image",
        mime_type="image/*",
        url=url,
        is_image=True,
        width=_int(attributes.get("width")),
        height=_int(attributes.get("height")),
    )


def _dedupe(attachments: Iterable[Attachment]) -> list[Attachment]:
    seen: set[str] = set()
    result: list[Attachment] = []
    for attachment in attachments:
        if attachment.url not in seen:
            seen.add(attachment.url)
            result.append(attachment)
    return result


def _guess(name: str | None, default: str) -> str:
    if name:
        guessed, _ = mimetypes.guess_type(name, strict=False)
        if guessed:
            return guessed
    return default


def _https(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 4096:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    digits = value.strip().removesuffix("px")
    return int(digits) if digits.isdigit() and len(digits) <= 6 else None
