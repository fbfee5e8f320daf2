"""Matrix room events (as JSON from an AS transaction) -> the core's ``InboundEvent``.

Supported: messages (text, notice, emote, HTML, mentions, replies, threads,
edits, images and files), reactions, redactions, and the bot's own
membership. Everything else returns ``None`` and is not recorded.

A ``formatted_body`` is kept as ``bridge.formatting.sanitize_html`` leaves it
(reply fallbacks in ``<mx-reply>`` go with the dangerous elements); when nothing
of it is visible the plain ``body`` stands alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

from mautrix.types import EventType, Format, Membership, MessageType, RelationType

from adapters.matrix.ids import GhostNamespace
from bridge.formatting import html_to_text, sanitize_html
from bridge.model import (
    Attachment,
    Body,
    InboundEvent,
    Kind,
    MessageStyle,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)

_STYLES = {
    MessageType.TEXT.value: MessageStyle.TEXT,
    MessageType.NOTICE.value: MessageStyle.NOTICE,
    MessageType.EMOTE.value: MessageStyle.EMOTE,
}
_MEDIA = {MessageType.IMAGE.value, MessageType.FILE.value, MessageType.VIDEO.value,
          MessageType.AUDIO.value, MessageType.STICKER.value}  # fmt: skip
_PILL = re.compile(r'<a\s+href="https://matrix\.to/#/(@[^"?]+)[^"]*"\s*>(.*?)</a>', re.I | re.S)
_REPLY_FALLBACK = re.compile(r"^(> .*\n)+\n", re.M)


def room_ref(room_id: str) -> RoomRef:
    return RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(room_id))


def message_ref(room_id: str, event_id: str) -> RemoteRef:
    return RemoteRef(room=room_ref(room_id), message_id=RemoteMessageID(event_id))


def matrix_sender(user_id: str, display_name: str | None) -> Sender:
    name = display_name or user_id[1:].split(":", 1)[0]
    return Sender(platform=Platform.MATRIX, user_id=RemoteUserID(user_id), display_name=name)


def _mentions(
    content: Mapping[str, Any], html: str | None, namespace: GhostNamespace
) -> tuple[Sender, ...]:
    names: dict[str, str] = {}
    if html:
        for user_id, label in _PILL.findall(html):
            names.setdefault(unquote(user_id), html_to_text(label) or unquote(user_id))
    declared = content.get("m.mentions")
    user_ids: list[str] = []
    if isinstance(declared, Mapping) and isinstance(declared.get("user_ids"), list):
        user_ids = [u for u in declared["user_ids"] if isinstance(u, str)]
    else:
        user_ids = list(names)  # no m.mentions: fall back on the pills
    return tuple(_mentioned(u, names.get(u), namespace) for u in dict.fromkeys(user_ids))


def _mentioned(user_id: str, name: str | None, namespace: GhostNamespace) -> Sender:
    """A mentioned user; a ghost stands for its Teams user, so the mention maps back."""
    teams_user = namespace.teams_user_of(user_id)
    if teams_user is not None:
        return Sender(
            platform=Platform.TEAMS,
            user_id=RemoteUserID(teams_user),
            display_name=name or teams_user,
        )
    return matrix_sender(user_id, name)


def _body(
    content: Mapping[str, Any], namespace: GhostNamespace, *, strip_reply_fallback: bool
) -> Body:
    text = content.get("body") if isinstance(content.get("body"), str) else ""
    assert isinstance(text, str)
    if strip_reply_fallback:
        text = _REPLY_FALLBACK.sub("", text, count=1)
    html: str | None = None
    if content.get("format") == Format.HTML.value and isinstance(
        content.get("formatted_body"), str
    ):
        html = sanitize_html(content["formatted_body"])  # also drops <mx-reply> fallbacks
        if not html_to_text(html):
            html = None  # nothing visible (an inline image without alt text): the body stands
    msgtype = content.get("msgtype")
    attachments: tuple[Attachment, ...] = ()
    if msgtype in _MEDIA and isinstance(content.get("url"), str):
        info = content.get("info") if isinstance(content.get("info"), Mapping) else {}
        assert isinstance(info, Mapping)
        attachments = (
            Attachment(
                name=str(content.get("filename") or text or "file"),
                mime_type=str(info.get("mimetype") or "application/octet-stream"),
                size=info.get("size") if isinstance(info.get("size"), int) else None,
                url=content["url"],
                is_image=msgtype in (MessageType.IMAGE.value, MessageType.STICKER.value),
                width=info.get("w") if isinstance(info.get("w"), int) else None,
                height=info.get("h") if isinstance(info.get("h"), int) else None,
            ),
        )
    return Body(
        text=text,
        html=html,
        style=_STYLES.get(str(msgtype), MessageStyle.TEXT),
        mentions=_mentions(content, html, namespace),
        attachments=attachments,
    )


def _relations(room_id: str, relates: Mapping[str, Any]) -> tuple[Relation, ...]:
    out: list[Relation] = []
    rel_type = relates.get("rel_type")
    target = relates.get("event_id")
    if rel_type == RelationType.THREAD.value and isinstance(target, str):
        out.append(Relation(kind=RelationKind.THREAD, target=message_ref(room_id, target)))
    reply = relates.get("m.in_reply_to")
    falling_back = rel_type == RelationType.THREAD.value and relates.get("is_falling_back")
    if isinstance(reply, Mapping) and isinstance(reply.get("event_id"), str) and not falling_back:
        out.append(
            Relation(kind=RelationKind.REPLY, target=message_ref(room_id, reply["event_id"]))
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Parsed:
    room_id: str
    origin: RemoteRef
    sender: Sender
    occurred_at: datetime
    content: Mapping[str, Any]
    relates: Mapping[str, Any]
    event: Mapping[str, Any]
    namespace: GhostNamespace

    def inbound(self, kind: Kind, **fields: Any) -> InboundEvent:
        return InboundEvent(
            kind=kind,
            origin=self.origin,
            sender=self.sender,
            occurred_at=self.occurred_at,
            **fields,
        )


def _message(p: _Parsed) -> InboundEvent | None:
    target = p.relates.get("event_id")
    if p.relates.get("rel_type") == RelationType.REPLACE.value and isinstance(target, str):
        new = p.content.get("m.new_content")
        new_content = new if isinstance(new, Mapping) else p.content
        return p.inbound(
            Kind.EDIT,
            body=_body(new_content, p.namespace, strip_reply_fallback=False),
            relations=(Relation(kind=RelationKind.EDIT, target=message_ref(p.room_id, target)),),
        )
    relations = _relations(p.room_id, p.relates)
    has_reply = any(r.kind is RelationKind.REPLY for r in relations)
    return p.inbound(
        Kind.MESSAGE,
        body=_body(p.content, p.namespace, strip_reply_fallback=has_reply),
        relations=relations,
    )


def _sticker(p: _Parsed) -> InboundEvent | None:
    sticker = {**p.content, "msgtype": MessageType.STICKER.value}
    return p.inbound(Kind.MESSAGE, body=_body(sticker, p.namespace, strip_reply_fallback=False))


def _reaction(p: _Parsed) -> InboundEvent | None:
    target, key = p.relates.get("event_id"), p.relates.get("key")
    if p.relates.get("rel_type") != RelationType.ANNOTATION.value:
        return None
    if not (isinstance(target, str) and isinstance(key, str)):
        return None
    relation = Relation(kind=RelationKind.REACTION, target=message_ref(p.room_id, target), key=key)
    return p.inbound(Kind.REACTION, body=Body(text=key), relations=(relation,))


def _redaction(p: _Parsed) -> InboundEvent | None:
    redacts = p.content.get("redacts") or p.event.get("redacts")  # v11 rooms moved it
    if not isinstance(redacts, str):
        return None
    relation = Relation(kind=RelationKind.REDACTION, target=message_ref(p.room_id, redacts))
    return p.inbound(
        Kind.REDACTION,
        relations=(relation,),
        data={"reason": str(p.content.get("reason", ""))[:500]},
    )


def _membership(p: _Parsed) -> InboundEvent | None:
    membership = p.content.get("membership")
    if p.event.get("state_key") != p.namespace.bot:
        return None  # only the bot's own membership is recorded
    if membership not in {m.value for m in Membership}:
        return None
    return p.inbound(Kind.MEMBERSHIP, data={"user_id": p.namespace.bot, "membership": membership})


_CONVERTERS: Final[Mapping[str, Callable[[_Parsed], InboundEvent | None]]] = {
    EventType.ROOM_MESSAGE.t: _message,
    EventType.STICKER.t: _sticker,
    EventType.REACTION.t: _reaction,
    EventType.ROOM_REDACTION.t: _redaction,
    EventType.ROOM_MEMBER.t: _membership,
}


def convert_event(
    event: Mapping[str, Any], *, namespace: GhostNamespace, display_name: str | None
) -> InboundEvent | None:
    """One room event as the core sees it, or None when the bridge does not record it."""
    converter = _CONVERTERS.get(str(event.get("type")))
    room_id, event_id, sender = event.get("room_id"), event.get("event_id"), event.get("sender")
    content, millis = event.get("content"), event.get("origin_server_ts")
    if converter is None or not isinstance(content, Mapping) or not isinstance(millis, int):
        return None
    if not (isinstance(room_id, str) and isinstance(event_id, str) and isinstance(sender, str)):
        return None
    relates = content.get("m.relates_to")
    parsed = _Parsed(
        room_id=room_id,
        origin=message_ref(room_id, event_id),
        sender=matrix_sender(sender, display_name),
        occurred_at=datetime.fromtimestamp(millis / 1000, tz=UTC),
        content=content,
        relates=relates if isinstance(relates, Mapping) else {},
        event=event,
        namespace=namespace,
    )
    return converter(parsed)
