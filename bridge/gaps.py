"""Gap markers: the Teams side never resends what it sent while the bridge was away.

Matrix homeservers retry their transactions until the bridge takes them, so
nothing said in Matrix is lost while the bridge is down. Teams does not: an
activity the bot did not acknowledge is gone. The bridge cannot fetch it
back, so it says so, explicitly, in the timeline and in the linked Matrix room:

- after downtime: at start-up, when no bridge process has been alive for longer
  than ``threshold``, every linked Teams conversation gets a marker for the
  window [last seen alive, now];
- on evidence: a Teams activity that refers to a message the bridge never
  received (a thread reply to an unknown root, an edit, delete or reaction of an
  unknown message) in a linked conversation gets a marker, once per unknown message.
  The root of a thread linked as a room of its own is no such evidence: it opened the
  room before the link was made (an incident's Teams thread: the bridge's own header).

Liveness is one shared record that every running process refreshes, so a
rolling restart with other replicas up records no gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog

from bridge.errors import StoreError
from bridge.ids import UlidFactory
from bridge.model import (
    AppendResult,
    Body,
    EventID,
    Kind,
    MessageStyle,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RoomLink,
    RoomRef,
    TimelineEvent,
)
from bridge.notices import BRIDGE_BOT
from bridge.ports import Clock, StateStore, TimelineStore
from bridge.relay.intake import PARENT_ROOM

log = structlog.get_logger(__name__)

LIVENESS = ("bridge_liveness", "last_alive")
_EVIDENCE = (
    RelationKind.THREAD,
    RelationKind.REPLY,
    RelationKind.EDIT,
    RelationKind.REDACTION,
    RelationKind.REACTION,
)


class GapRecorder:
    def __init__(
        self,
        *,
        store: TimelineStore,
        state: StateStore,
        clock: Clock,
        ids: UlidFactory,
        heartbeat: timedelta = timedelta(seconds=10),
        threshold: timedelta = timedelta(seconds=45),
    ) -> None:
        self._store = store
        self._state = state
        self._clock = clock
        self._ids = ids
        self._heartbeat = heartbeat
        self._threshold = threshold

    async def on_start(self) -> None:
        """Record a downtime gap for every linked Teams conversation, if there was downtime."""
        record = await self._state.get(*LIVENESS)
        now = self._clock.now()
        await self._beat(now)
        if record is None:
            return  # the first start: nothing could have been missed
        last = datetime.fromisoformat(record["at"])
        if now - last <= self._threshold:
            return
        for link in await self._store.all_links():
            await self._mark(
                link,
                key=f"gap:down:{last.isoformat()}",
                text=(
                    "⚠ Gap: the bridge was unreachable from "
                    f"{last:%Y-%m-%d %H:%M:%S} to {now:%H:%M:%S} UTC. Teams does not resend "
                    "messages, so anything said in Teams in that time is missing here."
                ),
                data={"gap": "downtime", "from": last.isoformat(), "to": now.isoformat()},
            )
        log.warning("downtime_gap_recorded", since=last.isoformat(), until=now.isoformat())

    async def run(self) -> None:
        """Refresh the shared liveness record until cancelled."""
        while True:
            await asyncio.sleep(self._heartbeat.total_seconds())
            try:
                await self._beat(self._clock.now())
            except StoreError:
                log.warning("liveness_not_recorded")

    async def _beat(self, now: datetime) -> None:
        await self._state.put(*LIVENESS, {"at": now.isoformat()})

    async def on_stored(self, results: Sequence[AppendResult]) -> None:
        """Mark a gap when a fresh Teams event refers to a message never received."""
        for result in results:
            event = result.event
            if result.duplicate or event.origin.platform is not Platform.TEAMS:
                continue
            unknown = [r for r in event.relations if r.kind in _EVIDENCE and r.event_id is None]
            if not unknown:
                continue
            links = await self._links(event.origin.room, event)
            unknown = [r for r in unknown if not _opens_linked_thread(r, event, links)]
            for relation in unknown:
                for link in links:
                    await self._mark(
                        link,
                        key=f"gap:missing:{relation.target.message_id}",
                        text=(
                            f"⚠ Gap: {event.sender.display_name} referred to a Teams message "
                            "the bridge never received (sent while it was unreachable)."
                        ),
                        data={"gap": "missing", "teams_message": relation.target.message_id},
                    )

    async def _links(self, room: RoomRef, event: TimelineEvent) -> list[RoomLink]:
        links = await self._store.links_for(room)
        if links:
            return links
        mirrors = {m.room for m in event.mirrors}
        return [lnk for lnk in await self._store.all_links() if lnk.matrix_room in mirrors]

    async def _mark(self, link: RoomLink, *, key: str, text: str, data: dict[str, str]) -> None:
        now = self._clock.now()
        marker = TimelineEvent(
            id=EventID(self._ids.new()),
            incident_id=link.incident_id,
            kind=Kind.GAP,
            origin=RemoteRef(room=link.teams_room, message_id=RemoteMessageID(key)),
            origin_variant="",
            sender=BRIDGE_BOT,
            body=Body(text=text, style=MessageStyle.NOTICE),
            occurred_at=now,
            received_at=now,
            data=data,
        )
        await self._store.append(marker, [link.matrix_room])


def _opens_linked_thread(relation: Relation, event: TimelineEvent, links: list[RoomLink]) -> bool:
    """Whether ``relation`` names the root of the thread ``event`` is in, that thread (a
    room inside a larger one) being linked as a room of its own.

    Such a root came before the link, so the bridge was never meant to receive it; an
    incident's thread is started by the bridge, and its root is the bridge's own header.
    """
    return (
        relation.kind is RelationKind.THREAD
        and relation.target.room == event.origin.room
        and PARENT_ROOM in event.data
        and any(event.origin.room in (link.matrix_room, link.teams_room) for link in links)
    )
