"""Linking rooms: the one place a link is made or removed, recorded and announced.

Every link change is written to the store and recorded in the timeline (who
linked what, when), and adapters that announce links (the Matrix side's
bridge metadata state events) are told.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from bridge.errors import BridgeError
from bridge.ids import UlidFactory
from bridge.model import (
    Body,
    EventID,
    Kind,
    MessageStyle,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    RoomLink,
    Sender,
    TimelineEvent,
)
from bridge.ports import ChatAdapter, Clock, SupportsLinkAnnouncements, TimelineStore

log = structlog.get_logger(__name__)


class LinkService:
    def __init__(
        self,
        *,
        store: TimelineStore,
        clock: Clock,
        ids: UlidFactory,
        adapters: Sequence[ChatAdapter],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change`` is told after every link change (caches of links drop theirs)."""
        self._on_change = on_change
        self._store = store
        self._clock = clock
        self._ids = ids
        self._adapters = adapters

    async def link(self, link: RoomLink, *, by: Sender) -> None:
        """Store the link, record it in both rooms' timelines, announce it."""
        existing = await self._store.all_links()
        if link in existing:
            return
        await self._store.save_link(link)
        self._changed()
        await self._record(link, by, "linked")
        for adapter in self._adapters:
            if isinstance(adapter, SupportsLinkAnnouncements):
                try:
                    await adapter.announce_link(link)
                except BridgeError as exc:
                    # Metadata only: the link works without it.
                    log.warning("link_announcement_failed", error=str(exc))
        log.info("rooms_linked", matrix=link.matrix_room.room_id, teams=link.teams_room.room_id)

    async def unlink(self, link: RoomLink, *, by: Sender) -> None:
        await self._store.remove_link(link)
        self._changed()
        await self._record(link, by, "unlinked")
        log.info("rooms_unlinked", matrix=link.matrix_room.room_id, teams=link.teams_room.room_id)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    async def _record(self, link: RoomLink, by: Sender, action: str) -> None:
        now = self._clock.now()
        change = self._ids.new()
        for room in (link.matrix_room, link.teams_room):
            await self._store.append(
                TimelineEvent(
                    id=EventID(self._ids.new()),
                    incident_id=link.incident_id,
                    kind=Kind.NOTICE,
                    origin=RemoteRef(room=room, message_id=RemoteMessageID(f"link:{change}")),
                    origin_variant=action,
                    sender=by,
                    body=Body(
                        text=f"{action}: {link.matrix_room.room_id} <-> {link.teams_room.room_id}",
                        style=MessageStyle.NOTICE,
                    ),
                    occurred_at=now,
                    received_at=now,
                    data={
                        "action": action,
                        "matrix_room": link.matrix_room.room_id,
                        "teams_room": link.teams_room.room_id,
                    },
                ),
                [],
            )


CONFIGURATION = Sender(
    platform=Platform.BRIDGE,
    user_id=RemoteUserID("configuration"),
    display_name="the bridge's settings",
)
"""The author of links that come from the settings file."""
