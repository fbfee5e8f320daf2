"""Event content for Matrix, built by pure functions: messages, edits, reactions, pills.

Transaction ids: the homeserver deduplicates client-server sends by path and
transaction id for a whole application service (not per ghost) and only for
a while, so every id is derived from the caller's idempotency key, the kind
of request, the room and the part of the message: ``ib.<kind>.<hash>``, the
same on every retry and different for anything else (see ``txn_id``).

Replies carry ``m.in_reply_to``; thread messages ``rel_type: m.thread`` with
``m.in_reply_to`` pointing at the replied-to message (``is_falling_back``
false) or, for a plain thread message, at the root (``is_falling_back`` true).
Every message carries ``m.mentions``. Attachments already on Matrix
(``mxc://``) follow the text as their own events; others are named in the text.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

from mautrix.types import Format, MessageType, RelationType

from adapters.matrix.ids import (
    MatrixTxnID,
    MatrixUserID,
)
from bridge.errors import PermanentDeliveryError
from bridge.formatting import html_to_text, sanitize_html, text_to_html
from bridge.model import (
    Attachment,
    Body,
    MessageStyle,
    RemoteMessageID,
)

T = TypeVar("T")
TxnKind = Literal["send", "edit", "redact", "react", "header"]

MAX_CONTENT_BYTES: Final = 60_000
"""Budget for one event's content; the homeserver refuses events over 64 KiB in all."""
TRUNCATED_MARKER: Final = "\u2026 [truncated]"
BRIDGE_STATE_KEY_PREFIX: Final = "incident-bridge://msteams/"
BRIDGE_STATE_TYPES: Final = ("m.bridge", "uk.half-shot.bridge")
MAX_RELATION_PAGES: Final = 5
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MSGTYPES: Final = {
    MessageStyle.TEXT: MessageType.TEXT.value,
    MessageStyle.NOTICE: MessageType.NOTICE.value,
    MessageStyle.EMOTE: MessageType.EMOTE.value,
}
MXC_URI: Final = re.compile(r"^mxc://([A-Za-z0-9.:\[\]-]+)/([A-Za-z0-9_-]+)$")
_TAG: Final = re.compile(r"(<[^>]*>)")
_TAG_NAME: Final = re.compile(r"^</?([a-z0-9]+)")
_NO_PILLS_INSIDE: Final = frozenset({"a", "code", "pre"})
_NAME_SPACE: Final = re.compile(r"(?:\\ )+")
"""A space in an escaped name: it matches spaces and no-break spaces in the text."""


# -- pure content building ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Mention:
    """A mentioned user as named in the text, and the MXID that stands for them."""

    name: str
    user_id: MatrixUserID


def txn_id(kind: TxnKind, room_id: str, idempotency_key: str, part: int = 0) -> MatrixTxnID:
    """A URL-safe transaction id, stable for one (kind, room, key, part) and unique otherwise."""
    fields = json.dumps([kind, room_id, idempotency_key, part], separators=(",", ":"))
    digest = hashlib.sha256(fields.encode()).hexdigest()
    return MatrixTxnID(f"ib.{kind}.{digest[:40]}")


def timestamp_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (a naive time is taken as UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)


def pill(mention: Mention) -> str:
    href = "https://matrix.to/#/" + quote(mention.user_id, safe="@:")
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(mention.name, quote=False)}</a>'


def add_pills(source_html: str, mentions: Sequence[Mention]) -> str:
    """Link each mentioned name (optionally after ``@``) in the text of well-formed HTML.

    Names inside links and code are left alone; longer names win over their prefixes;
    the words of a name may be parted by no-break spaces (Teams writes them so).
    """
    by_text = {_spaced(html.escape(m.name, quote=False)): m for m in mentions if m.name.strip()}
    if not by_text:
        return source_html
    alternatives = "|".join(
        _NAME_SPACE.sub(r"[ \\xa0]+", re.escape(t)) for t in sorted(by_text, key=len, reverse=True)
    )
    pattern = re.compile(rf"(?<![\w@])@?({alternatives})(?!\w)")
    out: list[str] = []
    closed_over: list[str] = []
    for piece in _TAG.split(source_html):
        if piece.startswith("<"):
            match = _TAG_NAME.match(piece)
            if match is not None and match.group(1) in _NO_PILLS_INSIDE:
                if piece.startswith("</"):
                    if match.group(1) in closed_over:
                        closed_over.remove(match.group(1))
                else:
                    closed_over.append(match.group(1))
            out.append(piece)
        elif closed_over:
            out.append(piece)
        else:
            out.append(pattern.sub(lambda m: pill(by_text[_spaced(m.group(1))]), piece))
    return "".join(out)


def _spaced(name: str) -> str:
    """``name`` with each run of spaces (no-break ones too) as one space."""
    return " ".join(name.replace("\xa0", " ").split())


def mentions_content(mentions: Sequence[Mention]) -> dict[str, Any]:
    return {"user_ids": list(dict.fromkeys(m.user_id for m in mentions))}


def text_content(body: Body, mentions: Sequence[Mention]) -> dict[str, Any]:
    """``msgtype``, ``body``, the formatted body if any and ``m.mentions`` of one text event.

    Attachments that are not on Matrix are named at the end of the text.
    """
    formatted = sanitize_html(body.html) if body.html is not None else None
    text = body.text or (html_to_text(formatted) if formatted is not None else "")
    notes = [a.name or "file" for a in body.attachments if MXC_URI.match(a.url) is None]
    if notes:
        lines = [f"(attachment not bridged: {name})" for name in notes]
        text = "\n".join([text, *lines]) if text else "\n".join(lines)
        if formatted is not None:
            formatted += "".join("<br>" + html.escape(line, quote=False) for line in lines)
    if formatted is None and mentions:
        plain = text_to_html(text)
        pilled = add_pills(plain, mentions)
        formatted = pilled if pilled != plain else None
    elif formatted is not None:
        formatted = add_pills(formatted, mentions)
    content: dict[str, Any] = {"msgtype": _MSGTYPES[body.style], "body": text}
    if formatted is not None:
        content["format"] = Format.HTML.value
        content["formatted_body"] = formatted
    content["m.mentions"] = mentions_content(mentions)
    return fit_content(content, MAX_CONTENT_BYTES)


def attachment_content(attachment: Attachment) -> dict[str, Any] | None:
    """An ``m.image``/``m.video``/``m.audio``/``m.file`` event for an ``mxc://`` attachment."""
    if MXC_URI.match(attachment.url) is None:
        return None
    mime = attachment.mime_type or "application/octet-stream"
    if attachment.is_image or mime.startswith("image/"):
        msgtype = MessageType.IMAGE
    elif mime.startswith("video/"):
        msgtype = MessageType.VIDEO
    elif mime.startswith("audio/"):
        msgtype = MessageType.AUDIO
    else:
        msgtype = MessageType.FILE
    info: dict[str, Any] = {"mimetype": mime}
    if attachment.size is not None:
        info["size"] = attachment.size
    if attachment.width is not None:
        info["w"] = attachment.width
    if attachment.height is not None:
        info["h"] = attachment.height
    name = attachment.name or "file"
    return {
        "msgtype": msgtype.value,
        "body": name,
        "filename": name,
        "url": attachment.url,
        "info": info,
        "m.mentions": {"user_ids": []},
    }


def relates_to(
    reply_to: RemoteMessageID | None,
    thread_root: RemoteMessageID | None,
    *,
    in_thread_fallback: bool = False,
) -> dict[str, Any] | None:
    """``m.relates_to`` of a reply, a thread message, or None.

    ``in_thread_fallback`` marks a later part of a thread message: it stays in
    the thread but is no reply of its own.
    """
    if thread_root is not None:
        target = thread_root if in_thread_fallback or reply_to is None else reply_to
        return {
            "rel_type": RelationType.THREAD.value,
            "event_id": thread_root,
            "is_falling_back": target == thread_root,
            "m.in_reply_to": {"event_id": target},
        }
    if reply_to is not None and not in_thread_fallback:
        return {"m.in_reply_to": {"event_id": reply_to}}
    return None


def message_parts(
    body: Body,
    mentions: Sequence[Mention],
    *,
    reply_to: RemoteMessageID | None = None,
    thread_root: RemoteMessageID | None = None,
) -> list[dict[str, Any]]:
    """The ``m.room.message`` contents of one bridged message: its text, then its media."""
    parts: list[dict[str, Any]] = []
    if body.text or body.html or any(MXC_URI.match(a.url) is None for a in body.attachments):
        parts.append(text_content(body, mentions))
    parts.extend(c for a in body.attachments if (c := attachment_content(a)) is not None)
    if not parts:
        raise PermanentDeliveryError("nothing to send: the message has no text and no media")
    for index, content in enumerate(parts):
        relation = relates_to(reply_to, thread_root, in_thread_fallback=index > 0)
        if relation is not None:
            content["m.relates_to"] = relation
    return parts


def edit_content(
    body: Body, mentions: Sequence[Mention], target: RemoteMessageID
) -> dict[str, Any]:
    """An ``m.replace`` of ``target`` with the new text; the fallback body starts with ``*``."""
    new_content = text_content(body, mentions)
    new_content = fit_content(new_content, MAX_CONTENT_BYTES // 2)
    return {
        "msgtype": new_content["msgtype"],
        "body": "* " + new_content["body"],
        "m.new_content": new_content,
        "m.relates_to": {"rel_type": RelationType.REPLACE.value, "event_id": target},
        "m.mentions": mentions_content(mentions),
    }


def reaction_content(target: RemoteMessageID, key: str) -> dict[str, Any]:
    return {
        "m.relates_to": {"rel_type": RelationType.ANNOTATION.value, "event_id": target, "key": key}
    }


def bridge_state_key(teams_conversation_id: str) -> str:
    return BRIDGE_STATE_KEY_PREFIX + teams_conversation_id


def bridge_info_content(
    bot: MatrixUserID, *, teams_conversation_id: str, teams_display_name: str
) -> dict[str, Any]:
    """MSC2346 bridge metadata: which bot bridges the room to which Teams conversation."""
    return {
        "bridgebot": bot,
        "protocol": {"id": "msteams", "displayname": "Microsoft Teams"},
        "channel": {"id": teams_conversation_id, "displayname": teams_display_name},
    }


def parse_mxc(url: str) -> tuple[str, str]:
    """``(server name, media id)`` of an ``mxc://`` URI."""
    match = MXC_URI.match(url)
    if match is None:
        raise PermanentDeliveryError(f"not a Matrix media URI: {url[:200]!r}")
    return match.group(1), match.group(2)


def _encoded_size(content: Mapping[str, Any]) -> int:
    return len(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode())


def fit_content(content: dict[str, Any], budget: int) -> dict[str, Any]:
    """``content`` within ``budget`` bytes: drop the formatted body, then shorten the text."""
    if _encoded_size(content) <= budget:
        return content
    fitted = {k: v for k, v in content.items() if k not in ("format", "formatted_body")}
    text = str(fitted["body"])
    while (excess := _encoded_size(fitted) - budget) > 0:
        if not text:
            raise PermanentDeliveryError(f"event content over {budget} bytes even without text")
        text = text[: max(0, len(text) - excess - len(TRUNCATED_MARKER))]
        fitted["body"] = text + TRUNCATED_MARKER
    return fitted
