"""Teams activities as core ``InboundEvent``s.

Rooms: the room of an event is the activity's ``conversation.id`` as received. In a
channel every post is the root of a thread, and Teams addresses the thread, root
post and replies alike, as ``19:<channel>@thread.tacv2;messageid=<root id>``: so one
channel thread is one room, its root post and its replies are ordinary messages
in it, and a reply also carries a THREAD relation to the root (for a link made at
the channel level). Channel-level activities (membership, installation) arrive with
the bare channel id and land in the channel's room. Group chats (``19:...@thread.v2``)
and personal chats (``a:...``) are one room each. Message data names the channel
and thread root (``teams_channel``, ``teams_thread_root``) so a channel link can
find its threads.

Origins (the timeline's deduplication key is platform, room, message id, kind and
variant) give exactly one record per real event and the same record for a
redelivery of the same activity:

============================  ==============  =======================================
activity                       message id      variant
============================  ==============  =======================================
message                        activity id     ``""``
messageUpdate editMessage      edited message  ``edit:<timestamp>:<content digest>``
  (Teams reuses the message id for every edit; A->B->A are three edits)
messageUpdate undeleteMessage  the message     ``undelete:<timestamp>`` (kind MESSAGE:
  the restored text arrives as a new message, the deletion stays in the timeline)
messageDelete softDelete       the message     ``delete:<timestamp>`` (undelete, delete again)
messageReaction (each item)    reacted message ``<added|removed>:<type>:<user>:<stamp>``
  (stamp: the reaction activity's own id, else its timestamp)
conversationUpdate,            activity id     ``""`` (a synthesised id when Teams sends
installationUpdate                             none: a digest of the event's content)
============================  ==============  =======================================
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

import structlog

from adapters.teams.activity import ActivityParseError, TeamsAccount, TeamsActivity
from adapters.teams.content import message_content, teams_sender
from bridge.model import (
    Body,
    InboundEvent,
    Kind,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RoomRef,
    Sender,
)
from bridge.ports import Clock

log = structlog.get_logger(__name__)

REACTION_KEYS: Final = {
    "like": "👍",
    "heart": "❤️",
    "laugh": "😆",
    "surprised": "😮",
    "sad": "😢",
    "angry": "😡",
}
_CODEPOINTS = re.compile(r"^(?P<hex>[0-9a-f]{4,6}(?:[-_][0-9a-f]{4,6})*)(?:_[a-z0-9_]+)?$")


def reaction_key(reaction_type: str) -> str:
    """The emoji of a Teams reaction type (``like`` -> 👍, ``1f525_fire`` -> 🔥)."""
    known = REACTION_KEYS.get(reaction_type.lower())
    if known is not None:
        return known
    match = _CODEPOINTS.match(reaction_type.lower())
    if match is not None:
        try:
            return "".join(chr(int(part, 16)) for part in re.split("[-_]", match.group("hex")))
        except (ValueError, OverflowError):
            pass
    return reaction_type


class ActivityConverter:
    """Turns one parsed activity into the events it stands for (possibly none)."""

    def __init__(self, *, app_id: str, clock: Clock) -> None:
        self._bot_ids = frozenset({f"28:{app_id}", app_id})
        self._clock = clock

    @property
    def bot_ids(self) -> frozenset[str]:
        return self._bot_ids

    def convert(self, activity: TeamsActivity) -> list[InboundEvent]:
        events = self._convert(activity)
        base = activity.base_conversation_id
        if activity.thread_root_id is None or not base or base == activity.conversation_id:
            return events
        # A channel thread belongs to its channel: a link of the channel covers it.
        channel = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(base))
        return [replace(event, parent_room=channel) for event in events]

    def _convert(self, activity: TeamsActivity) -> list[InboundEvent]:
        kind = activity.type
        if kind == "message":
            return [self._message(activity)]
        if kind == "messageUpdate":
            return self._update(activity)
        if kind == "messageDelete":
            return self._delete(activity)
        if kind == "messageReaction":
            return self._reactions(activity)
        if kind in ("conversationUpdate", "installationUpdate"):
            return [self._membership(activity)]
        return []

    # -- messages -------------------------------------------------------------
    def _message(self, activity: TeamsActivity, *, variant: str = "") -> InboundEvent:
        room, message_id, sender = self._essentials(activity)
        content = message_content(activity, bot_ids=self._bot_ids)
        relations: list[Relation] = []
        root = activity.thread_root_id
        if root is not None and root != message_id:
            relations.append(_relation(RelationKind.THREAD, room, root))
        if content.quoted is not None and content.quoted != message_id:
            relations.append(_relation(RelationKind.REPLY, room, content.quoted))
        data = self._message_data(activity)
        if content.addressed_to_bot:
            data["addressed_to_bot"] = True
        if variant:
            data["undelete"] = True
        return InboundEvent(
            kind=Kind.MESSAGE,
            origin=RemoteRef(room=room, message_id=RemoteMessageID(message_id)),
            origin_variant=variant,
            sender=sender,
            occurred_at=self._when(activity),
            body=content.body,
            relations=tuple(relations),
            data=data,
        )

    def _update(self, activity: TeamsActivity) -> list[InboundEvent]:
        event_type = activity.event_type or "editMessage"
        if event_type == "undeleteMessage":
            return [self._message(activity, variant=f"undelete:{self._stamp(activity)}")]
        if event_type != "editMessage":
            log.info("teams_update_ignored", event_type=event_type)
            return []
        room, message_id, sender = self._essentials(activity)
        content = message_content(activity, bot_ids=self._bot_ids)
        digest = _digest(activity.text, [dict(a) for a in activity.attachments])
        target = RemoteRef(room=room, message_id=RemoteMessageID(message_id))
        return [
            InboundEvent(
                kind=Kind.EDIT,
                origin=target,
                origin_variant=f"edit:{self._stamp(activity)}:{digest}",
                sender=sender,
                occurred_at=self._when(activity),
                body=content.body,
                relations=(Relation(kind=RelationKind.EDIT, target=target),),
                data=self._message_data(activity),
            )
        ]

    def _delete(self, activity: TeamsActivity) -> list[InboundEvent]:
        event_type = activity.event_type or "softDeleteMessage"
        if event_type != "softDeleteMessage":
            log.info("teams_delete_ignored", event_type=event_type)
            return []
        room, message_id, sender = self._essentials(activity)
        target = RemoteRef(room=room, message_id=RemoteMessageID(message_id))
        return [
            InboundEvent(
                kind=Kind.REDACTION,
                origin=target,
                origin_variant=f"delete:{self._stamp(activity)}",
                sender=sender,
                occurred_at=self._when(activity),
                relations=(Relation(kind=RelationKind.REDACTION, target=target),),
            )
        ]

    def _reactions(self, activity: TeamsActivity) -> list[InboundEvent]:
        room = self._room(activity)
        sender = self._sender(activity)
        target_id = activity.reply_to_id
        if target_id is None:
            raise ActivityParseError("a messageReaction needs replyToId")
        target = RemoteRef(room=room, message_id=RemoteMessageID(target_id))
        own_id = activity.id if activity.id != target_id else None
        stamp = own_id or self._stamp(activity)
        changes = [(t, False) for t in activity.reactions_added]
        changes += [(t, True) for t in activity.reactions_removed]
        events: list[InboundEvent] = []
        for reaction_type, removed in changes:
            key = reaction_key(reaction_type)
            change = "removed" if removed else "added"
            data: dict[str, Any] = {"teams_reaction": reaction_type}
            if removed:
                data["removed"] = True
            events.append(
                InboundEvent(
                    kind=Kind.REACTION,
                    origin=target,
                    origin_variant=f"{change}:{reaction_type}:{sender.user_id}:{stamp}",
                    sender=sender,
                    occurred_at=self._when(activity),
                    body=Body(text=key),
                    relations=(Relation(kind=RelationKind.REACTION, target=target, key=key),),
                    data=data,
                )
            )
        return events

    # -- membership -----------------------------------------------------------
    def _membership(self, activity: TeamsActivity) -> InboundEvent:
        room = self._room(activity)
        sender = self._sender(activity)
        data: dict[str, Any] = {"activity": activity.type}
        if activity.event_type:
            data["event_type"] = activity.event_type
        if activity.type == "installationUpdate":
            action = activity.action or ""
            data["action"] = action
            data["bot_added"] = action.startswith("add")
            data["bot_removed"] = action.startswith("remove")
        else:
            added = [self._member(m) for m in activity.members_added]
            removed = [self._member(m) for m in activity.members_removed]
            data["members_added"] = added
            data["members_removed"] = removed
            data["bot_added"] = any(m["is_bot_itself"] for m in added)
            data["bot_removed"] = any(m["is_bot_itself"] for m in removed)
        message_id = activity.id or f"{activity.type}:{_digest(self._stamp(activity), data)}"
        return InboundEvent(
            kind=Kind.MEMBERSHIP,
            origin=RemoteRef(room=room, message_id=RemoteMessageID(message_id)),
            sender=sender,
            occurred_at=self._when(activity),
            data=data,
        )

    def _member(self, account: TeamsAccount) -> dict[str, Any]:
        sender = teams_sender(account.id, account.aad_object_id, account.name)
        return {
            "user_id": sender.user_id,
            "teams_account_id": account.id,
            "name": account.name,
            "is_bot_itself": account.id in self._bot_ids,
        }

    # -- shared ---------------------------------------------------------------
    def _essentials(self, activity: TeamsActivity) -> tuple[RoomRef, str, Sender]:
        if not activity.id:
            raise ActivityParseError(f"a {activity.type} activity needs an id")
        return self._room(activity), activity.id, self._sender(activity)

    def _room(self, activity: TeamsActivity) -> RoomRef:
        if not activity.conversation_id:
            raise ActivityParseError(f"a {activity.type} activity needs conversation.id")
        return RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(activity.conversation_id))

    def _sender(self, activity: TeamsActivity) -> Sender:
        account = activity.sender
        if account is None:
            raise ActivityParseError(f"a {activity.type} activity needs from")
        return teams_sender(account.id, account.aad_object_id, account.name)

    def _message_data(self, activity: TeamsActivity) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if activity.sender is not None:
            data["teams_account_id"] = activity.sender.id
        if activity.thread_root_id is not None:
            data["teams_channel"] = activity.base_conversation_id
            data["teams_thread_root"] = activity.thread_root_id
        return data

    def _when(self, activity: TeamsActivity) -> datetime:
        return activity.timestamp or self._clock.now()

    def _stamp(self, activity: TeamsActivity) -> str:
        """The activity's own time, identical in a redelivery of the same activity."""
        if activity.timestamp is None:
            return "-"
        return activity.timestamp.isoformat(timespec="microseconds")


def _relation(kind: RelationKind, room: RoomRef, message_id: str) -> Relation:
    return Relation(kind=kind, target=RemoteRef(room=room, message_id=RemoteMessageID(message_id)))


def _digest(*parts: Any) -> str:
    material = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()[:16]
