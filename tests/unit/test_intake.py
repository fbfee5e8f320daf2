from __future__ import annotations

import asyncio

import pytest

from bridge.errors import OverloadedError, StoreError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Body,
    InboundEvent,
    IncidentID,
    Kind,
    Mirror,
    MirrorStatus,
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
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock

GHOST = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@teams_abc:example.org"), display_name="Bob"
)


def _inbound(message_id: str, *, sender: Sender = ALICE, **kwargs: object) -> InboundEvent:
    return InboundEvent(
        kind=kwargs.pop("kind", Kind.MESSAGE),  # type: ignore[arg-type]
        origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(message_id)),
        sender=sender,
        occurred_at=FakeClock().now(),
        body=Body(text="hi"),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def store() -> MemoryTimelineStore:
    return MemoryTimelineStore(clock=FakeClock())


@pytest.fixture
def intake(store: MemoryTimelineStore) -> Intake:
    return Intake(
        store=store,
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        adapters=[FakeAdapter(Platform.MATRIX), FakeAdapter(Platform.TEAMS)],
    )


async def test_linked_message_is_stored_with_an_outbox_entry(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    await store.save_link(
        RoomLink(
            matrix_room=MATRIX_ROOM,
            teams_room=TEAMS_ROOM,
            incident_id=IncidentID("INC-1"),
            created_at=FakeClock().now(),
        )
    )
    (result,) = await intake.accept([_inbound("$1")])
    assert result is not None
    assert not result.duplicate
    assert result.event.incident_id == "INC-1"
    assert [m.room for m in result.event.mirrors] == [TEAMS_ROOM]
    assert len(await store.pending(TEAMS_ROOM, limit=5)) == 1

    (again,) = await intake.accept([_inbound("$1")])
    assert again is not None
    assert again.duplicate
    assert again.event.id == result.event.id


async def test_echo_of_a_ghost_is_dropped_and_not_stored(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    assert await intake.accept([_inbound("$echo", sender=GHOST)]) == [None]
    assert (await store.timeline(room=MATRIX_ROOM)).events == ()


async def test_unlinked_room_is_recorded_but_not_mirrored(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    (result,) = await intake.accept([_inbound("$2")])
    assert result is not None
    assert result.event.mirrors == ()
    assert await store.pending(TEAMS_ROOM, limit=5) == []


async def test_relations_resolve_to_originals_and_mirrors(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    (original,) = await intake.accept([_inbound("$orig")])
    assert original is not None
    # A message that came from Teams and was mirrored here as "$mirrored".
    teams_event = _inbound("t1")
    (from_teams,) = await intake.accept(
        [
            InboundEvent(
                kind=Kind.MESSAGE,
                origin=RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("t1")),
                sender=teams_event.sender,
                occurred_at=teams_event.occurred_at,
            )
        ]
    )
    assert from_teams is not None
    await store.set_mirror(
        from_teams.event.id,
        Mirror(room=MATRIX_ROOM, status=MirrorStatus.SENT, message_id=RemoteMessageID("$mirrored")),
    )
    edit_target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$orig"))
    reply_target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$mirrored"))
    unknown = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$before-the-bridge"))
    (result,) = await intake.accept(
        [
            _inbound(
                "$3",
                relations=(
                    Relation(kind=RelationKind.EDIT, target=edit_target),
                    Relation(kind=RelationKind.REPLY, target=reply_target),
                    Relation(kind=RelationKind.THREAD, target=unknown),
                ),
            )
        ]
    )
    assert result is not None
    assert [r.event_id for r in result.event.relations] == [
        original.event.id,
        from_teams.event.id,
        None,
    ]


async def test_a_request_is_stored_in_one_write_and_relations_inside_it_resolve(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    calls: list[int] = []
    append_many = store.append_many

    async def counting(batch: object) -> object:
        calls.append(len(batch))  # type: ignore[arg-type]
        return await append_many(batch)  # type: ignore[arg-type]

    store.append_many = counting  # type: ignore[assignment,method-assign]
    target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$first"))
    results = await intake.accept(
        [
            _inbound("$first"),
            _inbound("$echo", sender=GHOST),
            _inbound(
                "$first",
                kind=Kind.EDIT,
                relations=(Relation(kind=RelationKind.EDIT, target=target),),
            ),
            _inbound("$first"),  # the same message twice in one request
        ]
    )
    assert calls == [3]
    first, echo, edit, again = results
    assert echo is None
    assert first is not None
    assert edit is not None
    assert again is not None
    assert edit.event.relations[0].event_id == first.event.id
    assert again.duplicate
    assert again.event.id == first.event.id
    assert first.event.id < edit.event.id


async def test_ids_follow_arrival_not_the_end_of_the_lookups(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    """A request that arrives first gets the smaller id even when its lookups finish last."""
    release = asyncio.Event()
    links_for = store.links_for

    async def slow_for_the_first(room: RoomRef) -> list[RoomLink]:
        if not release.is_set():
            release.set()
            await asyncio.sleep(0)  # let the second request overtake this one
            await asyncio.sleep(0)
        return await links_for(room)

    store.links_for = slow_for_the_first  # type: ignore[method-assign]
    first, second = await asyncio.gather(
        intake.accept([_inbound("$early")]), intake.accept([_inbound("$late")])
    )
    assert first[0] is not None
    assert second[0] is not None
    assert first[0].event.id < second[0].event.id


async def test_store_failure_propagates(intake: Intake, store: MemoryTimelineStore) -> None:
    store.available = False
    with pytest.raises(StoreError):
        await intake.accept([_inbound("$4")])


async def test_a_thread_is_covered_by_its_channels_link(
    intake: Intake, store: MemoryTimelineStore
) -> None:
    channel = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:chan@thread.tacv2"))
    thread = RoomRef(
        platform=Platform.TEAMS, room_id=RemoteRoomID("19:chan@thread.tacv2;messageid=17")
    )
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=channel, created_at=FakeClock().now())
    )
    teams_user = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-1"), display_name="Tess")
    (result,) = await intake.accept(
        [
            InboundEvent(
                kind=Kind.MESSAGE,
                origin=RemoteRef(room=thread, message_id=RemoteMessageID("18")),
                sender=teams_user,
                occurred_at=FakeClock().now(),
                parent_room=channel,
            )
        ]
    )
    assert result is not None
    assert [m.room for m in result.event.mirrors] == [MATRIX_ROOM]


class CountingLinks(MemoryTimelineStore):
    def __init__(self) -> None:
        super().__init__(clock=FakeClock())
        self.reads = 0

    async def all_links(self) -> list[RoomLink]:
        self.reads += 1
        return await super().all_links()


def _intake(store: MemoryTimelineStore, *, link_cache_ttl_s: float) -> Intake:
    return Intake(
        store=store,
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        adapters=[],
        link_cache_ttl_s=link_cache_ttl_s,
    )


async def test_links_are_read_once_per_interval_and_again_when_they_change() -> None:
    store = CountingLinks()
    intake = _intake(store, link_cache_ttl_s=3600)
    (unlinked,) = await intake.accept([_inbound("$u1")])
    assert unlinked is not None
    assert unlinked.event.mirrors == ()
    link = RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=FakeClock().now())
    await store.save_link(link)  # as another replica would: seen after the interval
    (stale,) = await intake.accept([_inbound("$u2")])
    assert stale is not None
    assert stale.event.mirrors == ()
    intake.forget_links()  # what the link service of this process calls
    results = await asyncio.gather(*(intake.accept([_inbound(f"$l{n}")]) for n in range(10)))
    assert all(r[0] is not None and r[0].event.mirrors for r in results)
    assert store.reads == 2  # concurrent lookups share one read
    await store.remove_link(link)
    intake.forget_links()
    (unlinked_again,) = await intake.accept([_inbound("$u3")])
    assert unlinked_again is not None
    assert unlinked_again.event.mirrors == ()


async def test_without_an_interval_every_request_sees_the_links_of_now() -> None:
    store = CountingLinks()
    intake = _intake(store, link_cache_ttl_s=0)
    link = RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=FakeClock().now())
    await store.save_link(link)
    (linked,) = await intake.accept([_inbound("$n1")])
    assert linked is not None
    assert [m.room for m in linked.event.mirrors] == [TEAMS_ROOM]
    await store.remove_link(link)
    (unlinked,) = await intake.accept([_inbound("$n2")])
    assert unlinked is not None
    assert unlinked.event.mirrors == ()


async def test_past_the_in_flight_limit_a_request_is_refused_at_once(
    store: MemoryTimelineStore,
) -> None:
    metrics = BridgeMetrics()
    intake = Intake(
        store=store,
        clock=FakeClock(),
        ids=UlidFactory(),
        metrics=metrics,
        adapters=[FakeAdapter(Platform.MATRIX)],
        max_in_flight=1,
    )
    entered, release = asyncio.Event(), asyncio.Event()
    append_many = store.append_many

    async def held(batch: object) -> object:
        entered.set()
        await release.wait()
        return await append_many(batch)  # type: ignore[arg-type]

    store.append_many = held  # type: ignore[assignment,method-assign]
    first = asyncio.get_running_loop().create_task(intake.accept([_inbound("$held")]))
    await asyncio.wait_for(entered.wait(), 5)
    with pytest.raises(OverloadedError) as refused:
        await intake.accept([_inbound("$refused")])
    assert refused.value.retry_after > 0
    release.set()
    (stored,) = await asyncio.wait_for(first, 5)
    assert stored is not None
    store.append_many = append_many  # type: ignore[method-assign]
    (later,) = await intake.accept([_inbound("$refused")])  # sent again: taken now
    assert later is not None
    assert not later.duplicate
    refusals = metrics.requests_refused.labels(platform="matrix")._value.get()
    assert refusals == 1
