"""Fake ChatAdapters that record what the core asks of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.errors import PermanentDeliveryError
from bridge.model import (
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
)
from bridge.ports import InboundSink, OutboundMessage


@dataclass
class FakeAdapter:
    platform: Platform
    own_user_prefix: str = "@teams_"
    ready: bool = True
    sink: InboundSink | None = None
    sent: list[tuple[OutboundMessage, str]] = field(default_factory=list)

    async def start(self, sink: InboundSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        self.sink = None

    def is_own(self, sender: Sender) -> bool:
        return sender.platform is self.platform and sender.user_id.startswith(self.own_user_prefix)

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        self.sent.append((message, idempotency_key))
        return RemoteRef(room=message.target, message_id=RemoteMessageID(f"sent-{len(self.sent)}"))


@dataclass(frozen=True)
class CreatedRoom:
    room: RoomRef
    name: str
    invite: tuple[str, ...]
    topic: str


@dataclass(frozen=True)
class PutHeader:
    room: RoomRef
    text: str
    html: str
    existing: RemoteMessageID | None
    message_id: RemoteMessageID


@dataclass
class FakeRoomAdapter(FakeAdapter):
    """A fake that also creates rooms and shows incident headers (records both).

    Matrix rooms are ``!incident-<n>:example.org``; Teams rooms are threads of
    ``teams_channel`` (``<channel>;messageid=<n>``), whose root is their header.
    """

    teams_channel: str = "19:incidents@thread.tacv2"
    names: dict[str, str] = field(default_factory=dict)
    """User id -> display name (``SupportsProfiles``)."""
    created: list[CreatedRoom] = field(default_factory=list)
    headers: list[PutHeader] = field(default_factory=list)
    fail_create: bool = False

    async def display_name(self, room: RoomRef, user_id: RemoteUserID) -> str | None:
        return self.names.get(user_id)

    async def create_room(self, name: str, *, invite: Sequence[str], topic: str) -> RoomRef:
        if self.fail_create:
            raise PermanentDeliveryError("room creation refused")
        number = len(self.created) + 1
        if self.platform is Platform.MATRIX:
            room_id = f"!incident-{number}:example.org"
        else:
            room_id = f"{self.teams_channel};messageid={1700000000000 + number}"
        room = RoomRef(platform=self.platform, room_id=RemoteRoomID(room_id))
        self.created.append(CreatedRoom(room=room, name=name, invite=tuple(invite), topic=topic))
        return room

    async def put_header(
        self, room: RoomRef, text: str, html: str, *, existing: RemoteMessageID | None
    ) -> RemoteMessageID:
        if existing is not None:
            message_id = existing
        elif self.platform is Platform.TEAMS:
            message_id = RemoteMessageID(room.room_id.rsplit("=", 1)[-1])  # the thread's root
        else:
            message_id = RemoteMessageID(f"$header-{len(self.headers) + 1}")
        self.headers.append(
            PutHeader(room=room, text=text, html=html, existing=existing, message_id=message_id)
        )
        return message_id

    def headers_in(self, room: RoomRef) -> list[PutHeader]:
        return [h for h in self.headers if h.room == room]
