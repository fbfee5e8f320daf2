"""Conversion between the core model and stored documents.

Both the MongoDB store and the in-memory fake store documents made here, so
they behave alike (times are kept to the millisecond, as BSON dates are).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.model import (
    Attachment,
    Body,
    EventID,
    IncidentID,
    Kind,
    MessageStyle,
    Mirror,
    MirrorStatus,
    OutboxEntry,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    ThreadStyle,
    TimelineEvent,
)

Doc = dict[str, Any]


def to_ms(value: datetime) -> datetime:
    """The same instant in UTC, cut to whole milliseconds (BSON date precision)."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def room_doc(room: RoomRef) -> Doc:
    return {"platform": room.platform.value, "room_id": room.room_id}


def room_from(doc: Mapping[str, Any]) -> RoomRef:
    return RoomRef(platform=Platform(doc["platform"]), room_id=RemoteRoomID(doc["room_id"]))


def ref_doc(ref: RemoteRef) -> Doc:
    return {**room_doc(ref.room), "message_id": ref.message_id}


def ref_from(doc: Mapping[str, Any]) -> RemoteRef:
    return RemoteRef(room=room_from(doc), message_id=RemoteMessageID(doc["message_id"]))


def sender_doc(sender: Sender) -> Doc:
    return {
        "platform": sender.platform.value,
        "user_id": sender.user_id,
        "display_name": sender.display_name,
    }


def sender_from(doc: Mapping[str, Any]) -> Sender:
    return Sender(
        platform=Platform(doc["platform"]),
        user_id=RemoteUserID(doc["user_id"]),
        display_name=doc["display_name"],
    )


def _attachment_doc(att: Attachment) -> Doc:
    return {
        "name": att.name,
        "mime_type": att.mime_type,
        "size": att.size,
        "url": att.url,
        "is_image": att.is_image,
        "width": att.width,
        "height": att.height,
    }


def _attachment_from(doc: Mapping[str, Any]) -> Attachment:
    return Attachment(
        name=doc["name"],
        mime_type=doc["mime_type"],
        size=doc.get("size"),
        url=doc.get("url", ""),
        is_image=doc.get("is_image", False),
        width=doc.get("width"),
        height=doc.get("height"),
    )


def body_doc(body: Body) -> Doc:
    return {
        "text": body.text,
        "html": body.html,
        "style": body.style.value,
        "mentions": [sender_doc(m) for m in body.mentions],
        "attachments": [_attachment_doc(a) for a in body.attachments],
    }


def body_from(doc: Mapping[str, Any]) -> Body:
    return Body(
        text=doc.get("text", ""),
        html=doc.get("html"),
        style=MessageStyle(doc.get("style", MessageStyle.TEXT.value)),
        mentions=tuple(sender_from(m) for m in doc.get("mentions", ())),
        attachments=tuple(_attachment_from(a) for a in doc.get("attachments", ())),
    )


def mirror_doc(mirror: Mirror) -> Doc:
    return {
        "room": room_doc(mirror.room),
        "room_key": mirror.room.key,
        "status": mirror.status.value,
        "message_id": mirror.message_id,
        "attempts": mirror.attempts,
        "error": mirror.error,
        "updated_at": to_ms(mirror.updated_at) if mirror.updated_at else None,
        "not_before": to_ms(mirror.not_before) if mirror.not_before else None,
    }


def mirror_from(doc: Mapping[str, Any]) -> Mirror:
    message_id = doc.get("message_id")
    return Mirror(
        room=room_from(doc["room"]),
        status=MirrorStatus(doc["status"]),
        message_id=RemoteMessageID(message_id) if message_id is not None else None,
        attempts=doc.get("attempts", 0),
        error=doc.get("error"),
        updated_at=doc.get("updated_at"),
        not_before=doc.get("not_before"),
    )


def queue_of(mirrors: Iterable[Mirror]) -> list[str]:
    """The stored ``queue`` field: the target rooms an event is still owed to."""
    return [m.room.key for m in mirrors if not m.settled]


def _relation_doc(rel: Relation) -> Doc:
    return {
        "kind": rel.kind.value,
        "target": ref_doc(rel.target),
        "event_id": rel.event_id,
        "key": rel.key,
    }


def _relation_from(doc: Mapping[str, Any]) -> Relation:
    event_id = doc.get("event_id")
    return Relation(
        kind=RelationKind(doc["kind"]),
        target=ref_from(doc["target"]),
        event_id=EventID(event_id) if event_id is not None else None,
        key=doc.get("key"),
    )


def event_doc(event: TimelineEvent) -> Doc:
    return {
        "_id": event.id,
        "incident_id": event.incident_id,
        "kind": event.kind.value,
        "origin": ref_doc(event.origin),
        "origin_room_key": event.origin.room.key,
        "origin_variant": event.origin_variant,
        "sender": sender_doc(event.sender),
        "body": body_doc(event.body),
        "occurred_at": to_ms(event.occurred_at),
        "received_at": to_ms(event.received_at),
        "relations": [_relation_doc(r) for r in event.relations],
        "mirrors": [mirror_doc(m) for m in event.mirrors],
        "queue": queue_of(event.mirrors),
        "data": dict(event.data),
    }


def event_from(doc: Mapping[str, Any]) -> TimelineEvent:
    incident_id = doc.get("incident_id")
    return TimelineEvent(
        id=EventID(doc["_id"]),
        incident_id=IncidentID(incident_id) if incident_id is not None else None,
        kind=Kind(doc["kind"]),
        origin=ref_from(doc["origin"]),
        origin_variant=doc.get("origin_variant", ""),
        sender=sender_from(doc["sender"]),
        body=body_from(doc.get("body", {})),
        occurred_at=doc["occurred_at"],
        received_at=doc["received_at"],
        relations=tuple(_relation_from(r) for r in doc.get("relations", ())),
        mirrors=tuple(mirror_from(m) for m in doc.get("mirrors", ())),
        data=doc.get("data", {}),
    )


def outbox_from(doc: Mapping[str, Any], room: RoomRef) -> OutboxEntry:
    return OutboxEntry(event=event_from(doc), target=room)


def room_from_key(key: str) -> RoomRef:
    """The room of a ``RoomRef.key``."""
    platform, _, room_id = key.partition("|")
    return RoomRef(platform=Platform(platform), room_id=RemoteRoomID(room_id))


def link_id(link: RoomLink) -> str:
    return f"{link.matrix_room.key}~{link.teams_room.key}"


def link_doc(link: RoomLink) -> Doc:
    return {
        "_id": link_id(link),
        "matrix_room": room_doc(link.matrix_room),
        "teams_room": room_doc(link.teams_room),
        "room_keys": [link.matrix_room.key, link.teams_room.key],
        "incident_id": link.incident_id,
        "created_at": to_ms(link.created_at),
        "created_by": sender_doc(link.created_by) if link.created_by else None,
        "threads": link.threads.value,
    }


def link_from(doc: Mapping[str, Any]) -> RoomLink:
    incident_id = doc.get("incident_id")
    created_by = doc.get("created_by")
    return RoomLink(
        matrix_room=room_from(doc["matrix_room"]),
        teams_room=room_from(doc["teams_room"]),
        incident_id=IncidentID(incident_id) if incident_id is not None else None,
        created_at=doc["created_at"],
        created_by=sender_from(created_by) if created_by else None,
        threads=ThreadStyle(doc.get("threads", ThreadStyle.THREAD.value)),
    )


class CursorError(ValueError):
    """A timeline cursor that this store did not issue."""


def encode_cursor(occurred_at: datetime, event_id: str) -> str:
    raw = json.dumps([to_ms(occurred_at).isoformat(), event_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, event_id = json.loads(raw)
        parsed = datetime.fromisoformat(when)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise CursorError("invalid timeline cursor") from exc
    if parsed.tzinfo is None or not isinstance(event_id, str):
        raise CursorError("invalid timeline cursor")
    return parsed, event_id
