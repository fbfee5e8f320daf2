from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from bridge.gaps import LIVENESS, GapRecorder
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    InboundEvent,
    IncidentID,
    Kind,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
)
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import MATRIX_ROOM, TEAMS_ROOM, EventBuilder, FakeClock

TESS = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-tess"), display_name="Tess")


async def _rig() -> tuple[FakeClock, MemoryTimelineStore, MemoryStateStore, GapRecorder]:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    state = MemoryStateStore()
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=clock.now())
    )
    gaps = GapRecorder(
        store=store, state=state, clock=clock, ids=UlidFactory(), threshold=timedelta(seconds=45)
    )
    return clock, store, state, gaps


async def _gaps(store: MemoryTimelineStore) -> list[str]:
    events = (await store.timeline(room=TEAMS_ROOM, limit=100)).events
    return [e.body.text for e in events if e.kind is Kind.GAP]


async def test_downtime_longer_than_the_threshold_is_marked_once_per_link() -> None:
    clock, store, state, gaps = await _rig()
    await gaps.on_start()  # first start ever: nothing missed
    assert await _gaps(store) == []
    clock.advance(30)
    await gaps.on_start()  # a quick restart (or another replica kept beating)
    assert await _gaps(store) == []
    clock.advance(600)
    await gaps.on_start()
    (marker,) = (await store.timeline(room=TEAMS_ROOM, limit=10)).events
    assert marker.kind is Kind.GAP
    assert "unreachable" in marker.body.text
    assert [m.room for m in marker.mirrors] == [MATRIX_ROOM]  # shown in the Matrix room
    assert await state.get(*LIVENESS) == {"at": clock.now().isoformat()}


async def test_a_reference_to_a_never_received_teams_message_is_marked_once() -> None:
    clock, store, _, gaps = await _rig()
    builder = EventBuilder(clock)
    missing = RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("1700000000999"))
    for n in range(2):
        reply = builder.message(
            "about that", room=TEAMS_ROOM,
            relations=(Relation(kind=RelationKind.THREAD, target=missing),),
        )  # fmt: skip
        reply = replace(reply, sender=TESS)
        await gaps.on_stored([AppendResult(event=reply, duplicate=n == 1)])
        await gaps.on_stored([AppendResult(event=reply, duplicate=False)])
    texts = await _gaps(store)
    assert len(texts) == 1
    assert "Tess referred to a Teams message the bridge never received" in texts[0]


CHANNEL = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:incidents@thread.tacv2"))


def _thread_reply(root: str, message_id: str, clock: FakeClock) -> InboundEvent:
    """A Teams reply in the channel thread of ``root``, as the Teams adapter hands it over."""
    thread = RoomRef(
        platform=Platform.TEAMS, room_id=RemoteRoomID(f"{CHANNEL.room_id};messageid={root}")
    )
    return InboundEvent(
        kind=Kind.MESSAGE,
        origin=RemoteRef(room=thread, message_id=RemoteMessageID(message_id)),
        sender=TESS,
        occurred_at=clock.now(),
        body=Body(text="checkout 500s"),
        relations=(
            Relation(
                kind=RelationKind.THREAD,
                target=RemoteRef(room=thread, message_id=RemoteMessageID(root)),
            ),
        ),
        parent_room=CHANNEL,
    )


async def _intake_rig(link_teams_room: RoomRef) -> tuple[FakeClock, MemoryTimelineStore, Intake]:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    await store.save_link(
        RoomLink(
            matrix_room=MATRIX_ROOM,
            teams_room=link_teams_room,
            incident_id=IncidentID("INC-1") if link_teams_room != CHANNEL else None,
            created_at=clock.now(),
        )
    )
    gaps = GapRecorder(store=store, state=MemoryStateStore(), clock=clock, ids=UlidFactory())
    intake = Intake(
        store=store,
        clock=clock,
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        adapters=[FakeAdapter(Platform.MATRIX), FakeAdapter(Platform.TEAMS)],
        on_stored=gaps.on_stored,
    )
    return clock, store, intake


async def _all_gaps(store: MemoryTimelineStore) -> list[str]:
    rooms = [link.teams_room for link in await store.all_links()]
    events = [e for room in rooms for e in (await store.timeline(room=room, limit=100)).events]
    return [e.body.text for e in events if e.kind is Kind.GAP]


async def test_a_reply_under_the_root_of_a_linked_thread_is_no_gap() -> None:
    """An incident's Teams thread is linked as a room; its root is the bridge's header."""
    root = "1700000000100"
    thread = _thread_reply(root, "1700000000200", FakeClock()).origin.room
    clock, store, intake = await _intake_rig(thread)
    (stored,) = await intake.accept([_thread_reply(root, "1700000000200", clock)])
    assert stored is not None
    assert stored.event.incident_id == "INC-1"
    assert [m.room for m in stored.event.mirrors] == [MATRIX_ROOM]
    assert await _all_gaps(store) == []


async def test_a_reply_under_a_never_received_root_in_a_linked_channel_is_a_gap() -> None:
    clock, store, intake = await _intake_rig(CHANNEL)
    (stored,) = await intake.accept([_thread_reply("1700000000100", "1700000000200", clock)])
    assert stored is not None
    assert [m.room for m in stored.event.mirrors] == [MATRIX_ROOM]
    (text,) = await _all_gaps(store)
    assert "Tess referred to a Teams message the bridge never received" in text
