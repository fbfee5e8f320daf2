"""Incidents and timeline events as the API's JSON (the shapes ``openapi.py`` describes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from bridge.incidents.model import Incident
from bridge.model import Mirror, Relation, RemoteRef, RoomRef, Sender, TimelineEvent
from bridge.web.view import Entry

Json = dict[str, Any]

MAX_LIMIT = 200
"""The most items one page of the API holds."""
INCIDENTS_LIMIT = 50
TIMELINE_LIMIT = 100


def when(value: datetime | None) -> str | None:
    """An ISO 8601 UTC time with milliseconds and ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sender_json(sender: Sender) -> Json:
    return {
        "platform": sender.platform.value,
        "user_id": sender.user_id,
        "display_name": sender.display_name,
    }


def room_json(room: RoomRef) -> Json:
    return {"platform": room.platform.value, "room_id": room.room_id}


def _ref_json(ref: RemoteRef) -> Json:
    return {**room_json(ref.room), "message_id": ref.message_id}


def incident_paths(incident_id: str) -> Json:
    quoted = quote(incident_id, safe="")
    return {
        "self": f"/api/v1/incidents/{quoted}",
        "timeline": f"/api/v1/incidents/{quoted}/timeline",
        "page": f"/incidents/{quoted}",
    }


def incident_json(incident: Incident) -> Json:
    return {
        "id": incident.id,
        "title": incident.title,
        "severity": incident.severity.value,
        "status": incident.status.value,
        "open": incident.open,
        "declared_at": when(incident.declared_at),
        "declared_by": sender_json(incident.declared_by),
        "declared_in": room_json(incident.declared_in),
        "rooms": [room_json(r) for r in incident.rooms],
        "roles": {role.value: sender_json(s) for role, s in incident.roles.items()},
        "acknowledged_at": when(incident.acknowledged_at),
        "mitigated_at": when(incident.mitigated_at),
        "resolved_at": when(incident.resolved_at),
        "summary": incident.summary,
        "impact": dict(incident.impact),
        "action_items": [
            {"text": a.text, "by": sender_json(a.by), "at": when(a.at)}
            for a in incident.action_items
        ],
        "postmortem": incident.postmortem,
        "version": incident.version,
        "links": incident_paths(incident.id),
    }


def _relation_json(relation: Relation) -> Json:
    return {
        "kind": relation.kind.value,
        "target": _ref_json(relation.target),
        "event_id": relation.event_id,
        "key": relation.key,
    }


def _mirror_json(mirror: Mirror) -> Json:
    return {
        "room": room_json(mirror.room),
        "status": mirror.status.value,
        "message_id": mirror.message_id,
        "attempts": mirror.attempts,
        "error": mirror.error,
        "updated_at": when(mirror.updated_at),
    }


def _plain(value: Any) -> Any:
    """Stored event data as JSON values (times as ISO strings)."""
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def event_json(event: TimelineEvent) -> Json:
    body = event.body
    return {
        "id": event.id,
        "incident_id": event.incident_id,
        "kind": event.kind.value,
        "platform": event.origin.platform.value,
        "origin": _ref_json(event.origin),
        "sender": sender_json(event.sender),
        "occurred_at": when(event.occurred_at),
        "received_at": when(event.received_at),
        "text": body.text,
        "html": body.html,
        "style": body.style.value,
        "mentions": [sender_json(m) for m in body.mentions],
        "attachments": [
            {"name": a.name, "mime_type": a.mime_type, "size": a.size, "is_image": a.is_image}
            for a in body.attachments
        ],
        "relations": [_relation_json(r) for r in event.relations],
        "mirrors": [_mirror_json(m) for m in event.mirrors],
        "data": _plain(event.data),
    }


def entry_json(entry: Entry) -> Json:
    """An event with what the same page says about it: later versions, delete, reactions."""
    doc = event_json(entry.event)
    doc["current_text"] = entry.text
    doc["edits"] = [
        {"event_id": e.id, "occurred_at": when(e.occurred_at), "text": e.body.text}
        for e in entry.edits
    ]
    doc["deleted"] = (
        {
            "event_id": entry.deleted.id,
            "occurred_at": when(entry.deleted.occurred_at),
            "by": sender_json(entry.deleted.sender),
        }
        if entry.deleted is not None
        else None
    )
    doc["reactions"] = [{"key": r.key, "senders": list(r.senders)} for r in entry.reactions]
    doc["key_event"] = entry.key_event
    return doc


def timeline_json(events: Sequence[TimelineEvent], entries: Sequence[Entry]) -> list[Json]:
    """Every event of a page in order. A message carries the edits, delete and reactions
    of the same page folded into it; those stay listed as events of their own too."""
    by_id = {e.event.id: e for e in entries}
    return [
        entry_json(by_id.get(event.id) or Entry(event=event, text=event.body.text))
        for event in events
    ]
