"""Fakes and builders shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.ids import UlidFactory
from bridge.model import (
    Body,
    EventID,
    IncidentID,
    Kind,
    Platform,
    Relation,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)

EPOCH = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


MATRIX_ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!ops:example.org"))
TEAMS_ROOM = RoomRef(
    platform=Platform.TEAMS, room_id=RemoteRoomID("19:abc@thread.tacv2;messageid=1700000000000")
)
ALICE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@alice:example.org"), display_name="Alice"
)


class EventBuilder:
    """Builds timeline events with fresh ids and increasing timestamps."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._ids = UlidFactory()
        self._counter = 0

    def message(
        self,
        text: str = "hello",
        *,
        room: RoomRef = MATRIX_ROOM,
        message_id: str | None = None,
        kind: Kind = Kind.MESSAGE,
        variant: str = "",
        occurred_at: datetime | None = None,
        incident_id: str | None = None,
        relations: tuple[Relation, ...] = (),
    ) -> TimelineEvent:
        self._counter += 1
        when = occurred_at or self._clock.now() + timedelta(milliseconds=self._counter)
        return TimelineEvent(
            id=EventID(self._ids.new()),
            incident_id=IncidentID(incident_id) if incident_id else None,
            kind=kind,
            origin=RemoteRef(
                room=room, message_id=RemoteMessageID(message_id or f"$m{self._counter}")
            ),
            origin_variant=variant,
            sender=ALICE,
            body=Body(text=text),
            occurred_at=when,
            received_at=self._clock.now(),
            relations=relations,
        )
