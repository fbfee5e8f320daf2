"""Notices the bridge itself posts (command replies, delivery failures, gap markers)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from bridge.ids import UlidFactory
from bridge.model import (
    Body,
    EventID,
    IncidentID,
    Kind,
    MessageStyle,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)

BRIDGE_ROOM: Final = RoomRef(platform=Platform.BRIDGE, room_id=RemoteRoomID("bridge"))
"""Where the bridge's own notices originate (they are mirrored into real rooms)."""
BRIDGE_BOT: Final = Sender(
    platform=Platform.BRIDGE, user_id=RemoteUserID("bridge"), display_name="Incident Bridge"
)


def bridge_notice(
    *,
    ids: UlidFactory,
    now: datetime,
    key: str,
    text: str,
    incident_id: IncidentID | None = None,
    kind: Kind = Kind.NOTICE,
    data: Mapping[str, Any] | None = None,
    html: str | None = None,
) -> TimelineEvent:
    """A notice by the bridge; ``key`` makes it unique (appending it twice stores it once).
    ``html``, when given, is its formatted form (sanitized, ``bridge.formatting``)."""
    return TimelineEvent(
        id=EventID(ids.new()),
        incident_id=incident_id,
        kind=kind,
        origin=RemoteRef(room=BRIDGE_ROOM, message_id=RemoteMessageID(key)),
        origin_variant="",
        sender=BRIDGE_BOT,
        body=Body(text=text, html=html, style=MessageStyle.NOTICE),
        occurred_at=now,
        received_at=now,
        data=dict(data or {}),
    )
