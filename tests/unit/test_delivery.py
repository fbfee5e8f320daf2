from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Body,
    EventID,
    InboundEvent,
    Kind,
    MirrorStatus,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RoomLink,
    RoomRef,
    Sender,
)
from bridge.ports import OutboundMessage
from bridge.relay.delivery import DeliveryService, DeliverySettings, backoff_delay
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock
from tests.support.waiting import eventually


@dataclass
class FlakyTeams(FakeAdapter):
    failures: list[Exception] = field(default_factory=list)
    edits: list[tuple[RemoteRef, str]] = field(default_factory=list)
    redactions: list[RemoteRef] = field(default_factory=list)
    originals: list[EventID | None] = field(default_factory=list)

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        if self.failures:
            raise self.failures.pop(0)
        return await super().send(message, idempotency_key=idempotency_key)

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        self.edits.append((target, message.event.body.text))

    async def redact(
        self,
        target: RemoteRef,
        sender: Sender,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> None:
        self.redactions.append(target)
        self.originals.append(original)


@dataclass
class Rig:
    clock: FakeClock
    store: MemoryTimelineStore
    intake: Intake
    teams: FlakyTeams
    service: DeliveryService
    matrix: FakeAdapter

    async def say(self, message_id: str, text: str = "x", **kwargs: object) -> None:
        event = InboundEvent(
            kind=kwargs.pop("kind", Kind.MESSAGE),  # type: ignore[arg-type]
            origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(message_id)),
            sender=ALICE,
            occurred_at=self.clock.now(),
            body=Body(text=text),
            **kwargs,  # type: ignore[arg-type]
        )
        await self.intake.accept([event])
        self.service.notify()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=clock.now())
    )
    teams = FlakyTeams(Platform.TEAMS)
    matrix = FakeAdapter(Platform.MATRIX)
    metrics = BridgeMetrics()
    ids = UlidFactory()
    intake = Intake(store=store, clock=clock, ids=ids, metrics=metrics, adapters=[matrix, teams])
    service = DeliveryService(
        store=store,
        clock=clock,
        adapters={Platform.TEAMS: teams, Platform.MATRIX: matrix},
        metrics=metrics,
        owner="test",
        settings=DeliverySettings(poll_interval_s=0.01),
        jitter=lambda: 0.5,
        ids=ids,
    )
    runner = asyncio.get_running_loop().create_task(service.run())
    yield Rig(clock, store, intake, teams, service, matrix)
    await service.stop(deadline_s=1)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def _sent_texts(rig: Rig, count: int) -> list[str]:
    async def enough() -> list[str] | None:
        texts = [m.event.body.text for m, _ in rig.teams.sent]
        return texts if len(texts) >= count else None

    return await eventually(enough, within=5, what=f"{count} deliveries")


async def test_messages_are_delivered_in_order_and_recorded_as_sent(rig: Rig) -> None:
    for i in range(20):
        await rig.say(f"$m{i}", f"line {i}")
    assert await _sent_texts(rig, 20) == [f"line {i}" for i in range(20)]
    page = await rig.store.timeline(room=MATRIX_ROOM)
    assert all(e.mirrors[0].status is MirrorStatus.SENT for e in page.events)
    assert len({key for _, key in rig.teams.sent}) == 20


async def test_retryable_failure_waits_for_retry_after_and_keeps_order(rig: Rig) -> None:
    rig.teams.failures = [RetryableDeliveryError("429", retry_after=30)]
    await rig.say("$a", "first")
    await rig.say("$b", "second")

    async def retrying() -> bool:
        event = (await rig.store.timeline(room=MATRIX_ROOM)).events[0]
        return event.mirrors[0].status is MirrorStatus.RETRYING

    await eventually(retrying, within=5, what="the head to be rescheduled")
    assert rig.teams.sent == []  # "second" waits behind "first"
    rig.clock.advance(29)
    rig.service.notify()
    await asyncio.sleep(0.05)
    assert rig.teams.sent == []
    rig.clock.advance(2)
    rig.service.notify()
    assert await _sent_texts(rig, 2) == ["first", "second"]


async def test_permanent_failure_is_recorded_and_the_room_moves_on(rig: Rig) -> None:
    rig.teams.failures = [PermanentDeliveryError("413 too big")]
    await rig.say("$big", "huge")
    await rig.say("$next", "next")
    assert await _sent_texts(rig, 1) == ["next"]
    event = (await rig.store.timeline(room=MATRIX_ROOM)).events[0]
    assert event.mirrors[0].status is MirrorStatus.FAILED
    assert event.mirrors[0].error == "413 too big"

    async def noticed() -> list[str] | None:
        texts = [m.event.body.text for m, _ in rig.matrix.sent]
        return texts or None

    (notice,) = await eventually(noticed, within=5, what="a notice in the origin room")
    assert notice == '⚠ The message by Alice ("huge") could not be delivered to Teams: 413 too big'


async def test_edits_and_redactions_target_the_mirrored_message(rig: Rig) -> None:
    await rig.say("$orig", "original")
    await _sent_texts(rig, 1)
    target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$orig"))
    await rig.say("$edit", "changed", kind=Kind.EDIT,
                  relations=(Relation(kind=RelationKind.EDIT, target=target),))  # fmt: skip
    await rig.say("$gone", "", kind=Kind.REDACTION,
                  relations=(Relation(kind=RelationKind.REDACTION, target=target),))  # fmt: skip

    async def done() -> bool:
        return bool(rig.teams.edits and rig.teams.redactions)

    await eventually(done, within=5, what="edit and redaction")
    mirrored = RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("sent-1"))
    assert rig.teams.edits == [(mirrored, "changed")]
    assert rig.teams.redactions == [mirrored]
    original = (await rig.store.timeline(room=MATRIX_ROOM)).events[0]
    assert rig.teams.originals == [original.id]
    assert len(rig.teams.sent) == 1  # neither became a new message


async def test_an_edit_and_a_reply_find_a_target_delivered_in_the_same_pass(rig: Rig) -> None:
    """A pass records its deliveries in one write at its end; what comes after a target
    in the same pass must still find where the target went."""
    target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$orig"))

    def event(
        message_id: str, text: str, kind: Kind, relation: RelationKind | None
    ) -> InboundEvent:
        return InboundEvent(
            kind=kind,
            origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(message_id)),
            sender=ALICE,
            occurred_at=rig.clock.now(),
            body=Body(text=text),
            relations=() if relation is None else (Relation(kind=relation, target=target),),
        )

    await rig.intake.accept(  # one insert: the worker's next pass reads all three
        [
            event("$orig", "original", Kind.MESSAGE, None),
            event("$edit", "changed", Kind.EDIT, RelationKind.EDIT),
            event("$reply", "answer", Kind.MESSAGE, RelationKind.REPLY),
        ]
    )
    rig.service.notify()

    async def done() -> bool:
        return bool(rig.teams.edits) and len(rig.teams.sent) == 2

    await eventually(done, within=5, what="the edit and the reply")
    mirrored = RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("sent-1"))
    assert rig.teams.edits == [(mirrored, "changed")]
    reply = rig.teams.sent[1][0]
    assert reply.reply_to == mirrored.message_id
    page = await rig.store.timeline(room=MATRIX_ROOM)
    assert all(e.mirrors[0].status is MirrorStatus.SENT for e in page.events)


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    settings = DeliverySettings(backoff_base_s=1, backoff_cap_s=60)
    assert backoff_delay(0, None, settings, jitter=0.5) == 1
    assert backoff_delay(3, None, settings, jitter=0.0) == 4
    assert backoff_delay(20, None, settings, jitter=1.0) == 60
    assert backoff_delay(0, 12.5, settings, jitter=0.5) == 12.5
    assert backoff_delay(0, 120, settings, jitter=0.5) == 120  # the platform asked for it


async def test_more_busy_rooms_than_workers_all_get_turns() -> None:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    rooms = [
        RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID(f"!r{n}:example.org"))
        for n in range(3)
    ]
    teams_rooms = [
        RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(f"19:t{n}@thread.v2"))
        for n in range(3)
    ]
    for matrix_room, teams_room in zip(rooms, teams_rooms, strict=True):
        await store.save_link(
            RoomLink(matrix_room=matrix_room, teams_room=teams_room, created_at=clock.now())
        )
    teams = FlakyTeams(Platform.TEAMS)
    metrics, ids = BridgeMetrics(), UlidFactory()
    intake = Intake(store=store, clock=clock, ids=ids, metrics=metrics, adapters=[teams])
    service = DeliveryService(
        store=store,
        clock=clock,
        adapters={Platform.TEAMS: teams},
        metrics=metrics,
        owner="one-slot",
        settings=DeliverySettings(poll_interval_s=0.01, max_rooms=1, max_hold_s=0.0),
    )
    for n in range(4):
        for room in rooms:
            await intake.accept(
                [
                    InboundEvent(
                        kind=Kind.MESSAGE,
                        origin=RemoteRef(room=room, message_id=RemoteMessageID(f"$m{n}")),
                        sender=ALICE,
                        occurred_at=clock.now(),
                        body=Body(text=f"{room.room_id} {n}"),
                    )
                ]
            )
    runner = asyncio.get_running_loop().create_task(service.run())
    try:

        async def everything() -> bool:
            return len(teams.sent) == 12

        await eventually(everything, within=5, what="all rooms served by one worker slot")
    finally:
        await service.stop(deadline_s=1)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert {m.target for m, _ in teams.sent} == set(teams_rooms)
