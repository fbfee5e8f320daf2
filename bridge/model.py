"""The platform-neutral core model: plain, immutable data.

Adapters convert their wire formats into these types; the core only ever sees
these. Identifiers are ``NewType``s so a Matrix room id cannot be passed where
a bridge event id is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType

EventID = NewType("EventID", str)
"""A timeline event id minted by the bridge (a ULID, sortable)."""
IncidentID = NewType("IncidentID", str)
RemoteRoomID = NewType("RemoteRoomID", str)
"""A room on one platform: a Matrix room id or a Teams conversation id."""
RemoteMessageID = NewType("RemoteMessageID", str)
"""A message on one platform: a Matrix event id or a Teams activity id."""
RemoteUserID = NewType("RemoteUserID", str)
"""A user on one platform: an MXID or a Teams AAD object id."""


class Platform(StrEnum):
    TEAMS = "teams"
    MATRIX = "matrix"
    BRIDGE = "bridge"


class Kind(StrEnum):
    MESSAGE = "message"
    EDIT = "edit"
    REDACTION = "redaction"
    REACTION = "reaction"
    COMMAND = "command"
    RUNBOOK = "runbook"
    INCIDENT = "incident"
    NOTICE = "notice"
    MEMBERSHIP = "membership"
    GAP = "gap"


class MessageStyle(StrEnum):
    """How a message reads: a normal line, a bot notice or an emote (/me)."""

    TEXT = "text"
    NOTICE = "notice"
    EMOTE = "emote"


class RelationKind(StrEnum):
    EDIT = "edit"
    REDACTION = "redaction"
    REACTION = "reaction"
    REPLY = "reply"
    THREAD = "thread"


class ThreadStyle(StrEnum):
    """How a link shows a Teams channel thread in Matrix."""

    THREAD = "thread"
    """As a Matrix thread (``m.thread``) under the mirrored root."""
    REPLY = "reply"
    """As a reply chain: each thread message replies to the mirrored root (for clients and
    rooms that do not use threads)."""


class MirrorStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomRef:
    platform: Platform
    room_id: RemoteRoomID

    @property
    def key(self) -> str:
        """A stable string for this room, used to key per-room ordering."""
        return f"{self.platform.value}|{self.room_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteRef:
    """Where something really happened: a message in a room on a platform."""

    room: RoomRef
    message_id: RemoteMessageID

    @property
    def platform(self) -> Platform:
        return self.room.platform


@dataclass(frozen=True, slots=True, kw_only=True)
class Sender:
    platform: Platform
    user_id: RemoteUserID
    display_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    name: str
    mime_type: str
    size: int | None = None
    url: str = ""
    """Where the adapter of the origin platform can fetch it (e.g. an mxc:// URI)."""
    is_image: bool = False
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Body:
    text: str = ""
    html: str | None = None
    """Sanitized HTML in the bridge's allow-listed subset, or None for plain text."""
    style: MessageStyle = MessageStyle.TEXT
    mentions: tuple[Sender, ...] = ()
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Relation:
    """A link from an event to another message (the target of an edit, a reply...)."""

    kind: RelationKind
    target: RemoteRef
    event_id: EventID | None = None
    """The target's timeline event, when the bridge knows it."""
    key: str | None = None
    """The reaction key (an emoji) for reactions."""


def first_relation(relations: tuple[Relation, ...], kind: RelationKind) -> Relation | None:
    return next((r for r in relations if r.kind is kind), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    """The copy of an event in one linked room on the other platform."""

    room: RoomRef
    status: MirrorStatus = MirrorStatus.PENDING
    message_id: RemoteMessageID | None = None
    attempts: int = 0
    error: str | None = None
    updated_at: datetime | None = None
    not_before: datetime | None = None
    """While retrying: no attempt before this time."""

    @property
    def settled(self) -> bool:
        """Sent or given up: never queued again."""
        return self.status in (MirrorStatus.SENT, MirrorStatus.FAILED)


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundEvent:
    """What an adapter hands to the core: one thing that happened on its platform."""

    kind: Kind
    origin: RemoteRef
    sender: Sender
    occurred_at: datetime
    body: Body = field(default_factory=Body)
    origin_variant: str = ""
    """Distinguishes events that share an origin and kind (e.g. two edits of one message)."""
    relations: tuple[Relation, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific structured payload (membership changes, command arguments...)."""
    parent_room: RoomRef | None = None
    """The larger room this one belongs to (a Teams channel for one of its threads): a
    link of the parent covers this room too."""

    def relation(self, kind: RelationKind) -> Relation | None:
        return first_relation(self.relations, kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEvent:
    """One entry of an incident timeline: the durable record of something that happened."""

    id: EventID
    incident_id: IncidentID | None
    kind: Kind
    origin: RemoteRef
    origin_variant: str
    sender: Sender
    body: Body
    occurred_at: datetime
    received_at: datetime
    relations: tuple[Relation, ...] = ()
    mirrors: tuple[Mirror, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def relation(self, kind: RelationKind) -> Relation | None:
        return first_relation(self.relations, kind)

    def mirror_in(self, room: RoomRef) -> Mirror | None:
        return next((m for m in self.mirrors if m.room == room), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """A queued delivery: a stored event and the target room it is still owed to."""

    event: TimelineEvent
    target: RoomRef

    @property
    def mirror(self) -> Mirror:
        return self.event.mirror_in(self.target) or Mirror(room=self.target)

    @property
    def not_before(self) -> datetime | None:
        return self.mirror.not_before


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    event: TimelineEvent
    duplicate: bool
    """True when the origin was already stored: a redelivery, acknowledged but not processed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomLink:
    """Two rooms, one on each platform, mirrored into each other."""

    matrix_room: RoomRef
    teams_room: RoomRef
    incident_id: IncidentID | None = None
    created_at: datetime
    created_by: Sender | None = None
    threads: ThreadStyle = ThreadStyle.THREAD

    def other(self, room: RoomRef) -> RoomRef:
        return self.teams_room if room == self.matrix_room else self.matrix_room


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of a timeline and the cursor to the next (None at the end)."""

    events: tuple[TimelineEvent, ...]
    next_cursor: str | None
