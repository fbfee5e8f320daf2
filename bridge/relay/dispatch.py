"""Dispatch: what one timeline event becomes on the target platform.

Messages and notices are sent (with reply and thread targets translated to the
target room's ids); edits, redactions and reactions are applied to the message
that mirrors their target there. What cannot be carried raises a permanent
delivery error, which the delivery service records on the mirror.
"""

from __future__ import annotations

from bridge.errors import PermanentDeliveryError
from bridge.model import (
    EventID,
    Kind,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RoomRef,
    TimelineEvent,
)
from bridge.ports import (
    ChatAdapter,
    OutboundMessage,
    SupportsEdits,
    SupportsReactions,
    SupportsRedactions,
    TimelineStore,
)


class Dispatcher:
    def __init__(self, store: TimelineStore) -> None:
        self._store = store

    async def remote_in(self, event_id: EventID | None, room: RoomRef) -> RemoteRef | None:
        """Where a timeline event lives in ``room``: its origin there, or its mirror."""
        if event_id is None:
            return None
        target = await self._store.get(event_id)
        if target is None:
            return None
        if target.origin.room == room:
            return target.origin
        mirror = target.mirror_in(room)
        if mirror is not None and mirror.message_id is not None:
            return RemoteRef(room=room, message_id=mirror.message_id)
        return None

    async def dispatch(
        self, adapter: ChatAdapter, event: TimelineEvent, room: RoomRef, key: str
    ) -> RemoteMessageID | None:
        """Carry one event to ``room``; returns the id of what represents it there."""
        if event.kind in (Kind.MESSAGE, Kind.NOTICE):
            reply = event.relation(RelationKind.REPLY)
            thread = event.relation(RelationKind.THREAD)
            reply_ref = await self.remote_in(reply.event_id if reply else None, room)
            thread_ref = await self.remote_in(thread.event_id if thread else None, room)
            message = OutboundMessage(
                event=event,
                target=room,
                reply_to=reply_ref.message_id if reply_ref else None,
                thread_root=thread_ref.message_id if thread_ref else None,
            )
            return (await adapter.send(message, idempotency_key=key)).message_id
        relation_kind = {
            Kind.EDIT: RelationKind.EDIT,
            Kind.REDACTION: RelationKind.REDACTION,
            Kind.REACTION: RelationKind.REACTION,
        }.get(event.kind)
        relation = event.relation(relation_kind) if relation_kind else None
        if relation is None:
            raise PermanentDeliveryError(f"{event.kind.value} events are not mirrored")
        target = await self.remote_in(relation.event_id, room)
        if target is None:
            raise PermanentDeliveryError("the target message was never bridged")
        if event.kind is Kind.EDIT and isinstance(adapter, SupportsEdits):
            await adapter.edit(
                target, OutboundMessage(event=event, target=room), idempotency_key=key
            )
            return target.message_id
        if event.kind is Kind.REDACTION and isinstance(adapter, SupportsRedactions):
            await adapter.redact(
                target, event.sender, idempotency_key=key, original=relation.event_id
            )
            return target.message_id
        if event.kind is Kind.REACTION and isinstance(adapter, SupportsReactions):
            key_text = relation.key or event.body.text
            return (
                await adapter.react(target, event.sender, key_text, idempotency_key=key)
            ).message_id
        raise PermanentDeliveryError(f"{room.platform.value} cannot carry {event.kind.value}")
