"""Rules shared by every timeline store implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from bridge.model import IncidentID, Mirror, RoomRef, TimelineEvent


def with_pending_mirrors(
    event: TimelineEvent, targets: Sequence[RoomRef], now: datetime
) -> TimelineEvent:
    """The event with a pending mirror for every target it does not mention yet."""
    known = {m.room for m in event.mirrors}
    extra = tuple(Mirror(room=t, updated_at=now) for t in targets if t not in known)
    return replace(event, mirrors=event.mirrors + extra) if extra else event


def scope_query(incident_id: IncidentID | None, room: RoomRef | None) -> dict[str, Any]:
    """The stored-document filter for one incident's or one room's timeline."""
    if (incident_id is None) == (room is None):
        raise ValueError("a timeline query needs exactly one of incident_id or room")
    if incident_id is not None:
        return {"incident_id": incident_id}
    assert room is not None
    return {"origin_room_key": room.key}
