from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from bridge.gaps import LIVENESS, GapRecorder
from bridge.ids import UlidFactory
from bridge.model import (
    AppendResult,
    Kind,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    RoomLink,
    Sender,
)
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
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
