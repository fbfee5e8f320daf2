"""Incidents <-> stored documents (shared by the MongoDB store and the in-memory one)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bridge.incidents.model import (
    ActionItem,
    Incident,
    IncidentFilter,
    Role,
    Severity,
    Status,
)
from bridge.model import IncidentID
from bridge.timeline.codec import CursorError, room_doc, room_from, sender_doc, sender_from, to_ms

Doc = dict[str, Any]


def incident_doc(incident: Incident) -> Doc:
    return {
        "_id": incident.id,
        "title": incident.title,
        "severity": incident.severity.value,
        "status": incident.status.value,
        "open": incident.open,
        "declared_at": to_ms(incident.declared_at),
        "declared_by": sender_doc(incident.declared_by),
        "declared_in": room_doc(incident.declared_in),
        "rooms": [room_doc(r) for r in incident.rooms],
        "room_keys": [r.key for r in incident.rooms],
        "roles": {role.value: sender_doc(s) for role, s in incident.roles.items()},
        "acknowledged_at": _ms(incident.acknowledged_at),
        "mitigated_at": _ms(incident.mitigated_at),
        "resolved_at": _ms(incident.resolved_at),
        "summary": incident.summary,
        "impact": dict(incident.impact),
        "action_items": [
            {"text": a.text, "by": sender_doc(a.by), "at": to_ms(a.at)}
            for a in incident.action_items
        ],
        "headers": dict(incident.headers),
        "postmortem": incident.postmortem,
        "version": incident.version,
    }


def incident_from(doc: Mapping[str, Any]) -> Incident:
    return Incident(
        id=IncidentID(doc["_id"]),
        title=doc["title"],
        severity=Severity(doc["severity"]),
        status=Status(doc["status"]),
        declared_at=doc["declared_at"],
        declared_by=sender_from(doc["declared_by"]),
        declared_in=room_from(doc["declared_in"]),
        rooms=tuple(room_from(r) for r in doc.get("rooms", ())),
        roles={Role(k): sender_from(v) for k, v in doc.get("roles", {}).items()},
        acknowledged_at=doc.get("acknowledged_at"),
        mitigated_at=doc.get("mitigated_at"),
        resolved_at=doc.get("resolved_at"),
        summary=doc.get("summary", ""),
        impact=dict(doc.get("impact", {})),
        action_items=tuple(
            ActionItem(text=a["text"], by=sender_from(a["by"]), at=a["at"])
            for a in doc.get("action_items", ())
        ),
        headers=dict(doc.get("headers", {})),
        postmortem=doc.get("postmortem"),
        version=doc.get("version", 0),
    )


def filter_query(query: IncidentFilter) -> Doc:
    """The stored-document filter for ``query``."""
    doc: Doc = {}
    if query.status is not None:
        doc["status"] = query.status.value
    if query.open_only:
        doc["open"] = True
    if query.severity is not None:
        doc["severity"] = query.severity.value
    declared: Doc = {}
    if query.declared_after is not None:
        declared["$gte"] = to_ms(query.declared_after)
    if query.declared_before is not None:
        declared["$lt"] = to_ms(query.declared_before)
    if declared:
        doc["declared_at"] = declared
    return doc


def encode_cursor(declared_at: datetime, incident_id: str) -> str:
    raw = json.dumps([to_ms(declared_at).isoformat(), incident_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (declared_at, id) after which the next page starts; ``CursorError`` if invalid."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, incident_id = json.loads(raw)
        parsed = datetime.fromisoformat(when)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise CursorError("invalid incident cursor") from exc
    if parsed.tzinfo is None or not isinstance(incident_id, str):
        raise CursorError("invalid incident cursor")
    return parsed, incident_id


def _ms(value: datetime | None) -> datetime | None:
    return to_ms(value) if value is not None else None
