"""Dispatch: what one timeline event becomes on the target platform.

- Messages and notices are sent, with reply and thread targets translated to
  the target room's ids and their attachments carried by ``bridge.relay.media``
  (downloaded on the origin platform, uploaded to the target; what cannot be
  carried is replaced by a visible line, never dropped silently).
- Edits replace the text of the message that mirrors their target (attachments
  stay as first carried: an edit carries text only).
- Reactions are shown on the message that stands for their target: as the
  reacting user's ghost where the bridge can act as users, in a line the bridge
  keeps where it cannot (Teams).
- Taking a reaction back arrives as a Teams reaction with ``data["removed"]``, or
  as a Matrix redaction of the reaction event. Either way the target adapter is
  asked to take the earlier reaction back (``SupportsReactionRemoval``), with the
  mirror of the earlier add when the timeline has it; without that capability the
  mirror is redacted. A second reaction is never added for a removal.
- Redactions of messages remove the message that mirrors their target.

What cannot be carried raises a permanent delivery error, which the delivery
service records on the mirror.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Final

from bridge.errors import PermanentDeliveryError
from bridge.model import (
    EventID,
    Kind,
    Mirror,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RoomRef,
    Sender,
    ThreadStyle,
    TimelineEvent,
)
from bridge.ports import (
    ChatAdapter,
    OutboundMessage,
    SupportsEdits,
    SupportsReactionRemoval,
    SupportsReactions,
    SupportsRedactions,
    TimelineStore,
)
from bridge.relay.media import MediaCarrier
from bridge.timeline.codec import encode_cursor

SUB_ROOM_MARKER: Final = ";"
"""A room inside a larger one extends its id (a Teams thread: ``<channel>;messageid=<root>``)."""
ADD_SEARCH_PAGES: Final = 20
ADD_SEARCH_PAGE_SIZE: Final = 200
ADD_SEARCH_MARGIN: Final = timedelta(minutes=10)
"""How far before the reacted message's time the search for an earlier reaction starts
(the two platforms' clocks may disagree a little)."""


class Dispatcher:
    """Turns timeline events into adapter calls (see the module doc).

    ``adapters`` (every platform's adapter) lets attachments be downloaded from the
    platform they came from; without it attachments are passed on as they are.
    """

    def __init__(
        self,
        store: TimelineStore,
        *,
        adapters: Mapping[Platform, ChatAdapter] | None = None,
        media: MediaCarrier | None = None,
    ) -> None:
        self._store = store
        if media is None and adapters is not None:
            media = MediaCarrier(adapters=adapters)
        self._media = media
        self._unrecorded: dict[str, dict[EventID, RemoteMessageID]] = {}
        """Per target room: deliveries made in the current pass, not yet written to the
        store (delivery records a pass's deliveries in one write, at its end)."""

    def delivered(self, room: RoomRef, event_id: EventID, message_id: RemoteMessageID) -> None:
        """``event_id`` was just delivered into ``room`` as ``message_id``: an edit, a
        reaction or a reply to it later in the same pass finds it before it is stored."""
        self._unrecorded.setdefault(room.key, {})[event_id] = message_id

    def recorded(self, room: RoomRef) -> None:
        """The pass's deliveries into ``room`` are written (or will be sent again)."""
        self._unrecorded.pop(room.key, None)

    async def remote_in(self, event_id: EventID | None, room: RoomRef) -> RemoteRef | None:
        """Where a timeline event lives in ``room``: its origin there, or its mirror."""
        if event_id is None:
            return None
        unrecorded = self._unrecorded.get(room.key, {}).get(event_id)
        if unrecorded is not None:
            return RemoteRef(room=room, message_id=unrecorded)
        target = await self._store.get(event_id)
        if target is None:
            return None
        if target.origin.room == room or _inside(target.origin.room, room):
            return target.origin
        mirror = target.mirror_in(room)
        if mirror is not None and mirror.message_id is not None:
            return RemoteRef(room=room, message_id=mirror.message_id)
        return None

    async def dispatch(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID | None:
        """Carry one event to ``room``; returns the id of what represents it there."""
        if event.kind in (Kind.MESSAGE, Kind.NOTICE, Kind.GAP):
            return await self._send(adapter, event, room, key)
        if event.kind is Kind.EDIT:
            return await self._edit(adapter, event, room, key)
        if event.kind is Kind.REDACTION:
            return await self._redaction(adapter, event, room, key)
        if event.kind is Kind.REACTION:
            return await self._reaction(adapter, event, room, key)
        raise PermanentDeliveryError(f"{event.kind.value} events are not mirrored")

    async def _target(self, relation: Relation, room: RoomRef) -> RemoteRef:
        target = await self.remote_in(relation.event_id, room)
        if target is None:
            raise PermanentDeliveryError("the target message was never bridged")
        return target

    # -- messages -------------------------------------------------------------------

    async def _send(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID:
        reply = event.relation(RelationKind.REPLY)
        thread = event.relation(RelationKind.THREAD)
        reply_ref = await self.remote_in(reply.event_id if reply else None, room)
        thread_ref = await self.remote_in(thread.event_id if thread else None, room)
        if thread_ref is not None and await self._threads_as_replies(room):
            reply_ref, thread_ref = reply_ref or thread_ref, None
        if self._media is not None:
            event = await self._media.carry(event, adapter, key)
        message = OutboundMessage(
            event=event,
            target=room,
            reply_to=reply_ref.message_id if reply_ref else None,
            thread_root=thread_ref.message_id if thread_ref else None,
        )
        return (await adapter.send(message, idempotency_key=key)).message_id

    async def _threads_as_replies(self, room: RoomRef) -> bool:
        """Whether ``room``'s link shows the other side's threads as reply chains."""
        return any(
            link.threads is ThreadStyle.REPLY and link.matrix_room == room
            for link in await self._store.links_for(room)
        )

    async def _edit(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID:
        target = await self._target(_required(event, RelationKind.EDIT), room)
        if not isinstance(adapter, SupportsEdits):
            raise PermanentDeliveryError(f"{room.platform.value} cannot carry edits")
        text_only = replace(event, body=replace(event.body, attachments=()))
        await adapter.edit(
            target, OutboundMessage(event=text_only, target=room), idempotency_key=key
        )
        return target.message_id

    async def _redaction(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID | None:
        relation = _required(event, RelationKind.REDACTION)
        reaction = await self._reaction_behind(relation)
        if reaction is not None:
            return await self._withdraw(adapter, reaction, room, key)
        target = await self._target(relation, room)
        if not isinstance(adapter, SupportsRedactions):
            raise PermanentDeliveryError(f"{room.platform.value} cannot carry redactions")
        await adapter.redact(target, event.sender, idempotency_key=key, original=relation.event_id)
        return target.message_id

    # -- reactions ------------------------------------------------------------------

    async def _reaction(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID | None:
        relation = _required(event, RelationKind.REACTION)
        if event.data.get("removed"):
            earlier = await self._earlier_add(event, relation)
            return await self._take_back(
                adapter,
                replace(relation, key=_reaction_key(event, relation)),
                sender=event.sender,
                mirror=earlier.mirror_in(room) if earlier is not None else None,
                room=room,
                key=key,
            )
        target = await self._target(relation, room)
        if not isinstance(adapter, SupportsReactions):
            raise PermanentDeliveryError(f"{room.platform.value} cannot carry reactions")
        shown = await adapter.react(
            target,
            event.sender,
            _reaction_key(event, relation),
            idempotency_key=key,
            original=relation.event_id,
        )
        return shown.message_id if shown is not None else None

    async def _withdraw(
        self, adapter: ChatAdapter, reaction: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID | None:
        """A redaction of a reaction: take that reaction back where it was shown."""
        relation = reaction.relation(RelationKind.REACTION)
        if relation is None:
            return None
        return await self._take_back(
            adapter,
            replace(relation, key=_reaction_key(reaction, relation)),
            sender=reaction.sender,
            mirror=reaction.mirror_in(room),
            room=room,
            key=key,
        )

    async def _take_back(
        self,
        adapter: ChatAdapter,
        relation: Relation,
        *,
        sender: Sender,
        mirror: Mirror | None,
        room: RoomRef,
        key: str,
    ) -> RemoteMessageID | None:
        shown = (
            RemoteRef(room=room, message_id=mirror.message_id)
            if mirror is not None and mirror.message_id is not None
            else None
        )
        target = await self.remote_in(relation.event_id, room)
        if target is None:
            return None  # the reacted message never got there, so neither did the reaction
        reaction_key = relation.key or ""
        if isinstance(adapter, SupportsReactionRemoval):
            removed = await adapter.unreact(
                target,
                sender,
                reaction_key,
                idempotency_key=key,
                original=relation.event_id,
                reaction=shown,
            )
            return removed.message_id if removed is not None else None
        if shown is None:
            return None  # nothing was shown there: nothing to take back
        if isinstance(adapter, SupportsRedactions):
            await adapter.redact(shown, sender, idempotency_key=key)
            return shown.message_id
        raise PermanentDeliveryError(f"{room.platform.value} cannot take reactions back")

    async def _reaction_behind(self, relation: Relation) -> TimelineEvent | None:
        """The reaction a redaction removes, if it removes a reaction."""
        if relation.event_id is not None:
            target = await self._store.get(relation.event_id)
            return target if target is not None and target.kind is Kind.REACTION else None
        return await self._store.find_by_origin(relation.target, Kind.REACTION)

    async def _earlier_add(
        self, removal: TimelineEvent, relation: Relation
    ) -> TimelineEvent | None:
        """The reaction ``removal`` takes back: the latest earlier one by the same sender,
        with the same key, on the same message (a bounded search of the origin room)."""
        reacted = await self._store.get(relation.event_id) if relation.event_id else None
        since = (reacted.occurred_at if reacted is not None else removal.occurred_at) - (
            ADD_SEARCH_MARGIN
        )
        key = _reaction_key(removal, relation)
        # Both stores page with codec cursors: start at the reacted message, not at the
        # room's first event.
        cursor: str | None = encode_cursor(since, "")
        found: TimelineEvent | None = None
        for _ in range(ADD_SEARCH_PAGES):
            page = await self._store.timeline(
                room=removal.origin.room, cursor=cursor, limit=ADD_SEARCH_PAGE_SIZE
            )
            for candidate in page.events:
                if _adds(candidate, removal, key):
                    found = candidate
            cursor = page.next_cursor
            if cursor is None:
                break
        return found


def _adds(candidate: TimelineEvent, removal: TimelineEvent, key: str) -> bool:
    """Whether ``candidate`` is a reaction that ``removal`` may take back."""
    if candidate.kind is not Kind.REACTION or candidate.data.get("removed"):
        return False
    if candidate.id >= removal.id or candidate.origin != removal.origin:
        return False
    if candidate.sender.user_id != removal.sender.user_id:
        return False
    relation = candidate.relation(RelationKind.REACTION)
    return relation is not None and _reaction_key(candidate, relation) == key


def _reaction_key(event: TimelineEvent, relation: Relation) -> str:
    return relation.key or event.body.text


def _required(event: TimelineEvent, kind: RelationKind) -> Relation:
    relation = event.relation(kind)
    if relation is None:
        raise PermanentDeliveryError(f"a {event.kind.value} without its target is not mirrored")
    return relation


def _inside(room: RoomRef, outer: RoomRef) -> bool:
    """Whether ``room`` is a room within ``outer`` (a thread of a channel)."""
    return room.platform is outer.platform and room.room_id.startswith(
        outer.room_id + SUB_ROOM_MARKER
    )
