"""One contract for every TimelineStore: the in-memory fake and MongoDB behave alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from bridge.model import (
    IncidentID,
    Kind,
    Mirror,
    MirrorStatus,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RoomLink,
    RoomRef,
    ThreadStyle,
)
from bridge.ports import StateStore, TimelineStore
from bridge.timeline.codec import CursorError
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import MongoServer
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, EventBuilder, FakeClock

LEASE = timedelta(seconds=30)


class Backend:
    def __init__(self, clock: FakeClock, store: TimelineStore, state: StateStore) -> None:
        self.clock = clock
        self.store = store
        self.state = state
        self.events = EventBuilder(clock)


@pytest.fixture(params=["memory", "mongo"])
async def backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Backend]:
    clock = FakeClock()
    if request.param == "memory":
        yield Backend(clock, MemoryTimelineStore(clock=clock), MemoryStateStore())
        return
    server: MongoServer = request.getfixturevalue("mongo_server")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
    name = f"contract_{uuid.uuid4().hex[:12]}"
    store = MongoTimelineStore(client, name, clock=clock, write_concern=WriteConcern(w=1, j=True))
    await store.ensure_indexes()
    await store.ensure_indexes()  # idempotent
    yield Backend(clock, store, MongoStateStore(store.database))
    await client.drop_database(name)
    await client.close()


async def test_append_is_idempotent_on_origin(backend: Backend) -> None:
    first = backend.events.message("hi", message_id="$same")
    again = replace(backend.events.message("hi", message_id="$same"))
    assert first.id != again.id

    stored = await backend.store.append(first, [TEAMS_ROOM])
    replay = await backend.store.append(again, [TEAMS_ROOM])

    assert not stored.duplicate
    assert replay.duplicate
    assert replay.event.id == first.id
    page = await backend.store.timeline(room=MATRIX_ROOM)
    assert [e.id for e in page.events] == [first.id]
    assert len(await backend.store.pending(TEAMS_ROOM, limit=10)) == 1


async def test_kind_and_variant_are_part_of_the_origin_key(backend: Backend) -> None:
    message = backend.events.message(message_id="$m")
    edit1 = backend.events.message(message_id="$m", kind=Kind.EDIT, variant="1")
    edit2 = backend.events.message(message_id="$m", kind=Kind.EDIT, variant="2")
    for event in (message, edit1, edit2):
        assert not (await backend.store.append(event, [])).duplicate
    found = await backend.store.find_by_origin(message.origin, Kind.EDIT, "2")
    assert found is not None
    assert found.id == edit2.id
    assert await backend.store.find_by_origin(message.origin, Kind.REACTION) is None


async def test_round_trip_keeps_every_field(backend: Backend) -> None:
    target = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$target"))
    event = backend.events.message(
        "reply",
        incident_id="INC-7",
        relations=(Relation(kind=RelationKind.REPLY, target=target, key=None),),
    )
    await backend.store.append(event, [TEAMS_ROOM])
    got = await backend.store.get(event.id)
    assert got is not None
    assert got.relations == event.relations
    assert got.sender == ALICE
    assert got.incident_id == IncidentID("INC-7")
    assert got.occurred_at == event.occurred_at.replace(
        microsecond=event.occurred_at.microsecond // 1000 * 1000
    )
    assert got.occurred_at.tzinfo is not None
    assert [m.status for m in got.mirrors] == [MirrorStatus.PENDING]


async def test_timeline_is_ordered_and_paged_by_cursor(backend: Backend) -> None:
    base = backend.clock.now()
    # Appended out of order; two share a timestamp (ties break on the event id).
    offsets = [5, 1, 3, 3, 2, 4, 0]
    appended = []
    for offset in offsets:
        event = backend.events.message(
            f"m{offset}", occurred_at=base + timedelta(seconds=offset), incident_id="INC-1"
        )
        appended.append(event)
        await backend.store.append(event, [])
    other = backend.events.message("elsewhere", incident_id="INC-2")
    await backend.store.append(other, [])

    expected = [e.id for e in sorted(appended, key=lambda e: (e.occurred_at, e.id))]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await backend.store.timeline(incident_id=IncidentID("INC-1"), cursor=cursor, limit=3)
        seen.extend(e.id for e in page.events)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected

    with pytest.raises(CursorError):
        await backend.store.timeline(incident_id=IncidentID("INC-1"), cursor="garbage!")


async def test_room_timeline_is_scoped_to_its_room(backend: Backend) -> None:
    in_matrix = backend.events.message("a")
    in_teams = backend.events.message("b", room=TEAMS_ROOM)
    await backend.store.append(in_matrix, [TEAMS_ROOM])
    await backend.store.append(in_teams, [MATRIX_ROOM])
    page = await backend.store.timeline(room=TEAMS_ROOM)
    assert [e.id for e in page.events] == [in_teams.id]
    assert page.next_cursor is None
    with pytest.raises(ValueError, match="exactly one"):
        await backend.store.timeline()


async def test_mirror_lookup_and_update(backend: Backend) -> None:
    event = backend.events.message("x")
    await backend.store.append(event, [TEAMS_ROOM])
    mirror = Mirror(
        room=TEAMS_ROOM,
        status=MirrorStatus.SENT,
        message_id=RemoteMessageID("1700000000123"),
        attempts=1,
        updated_at=backend.clock.now(),
    )
    await backend.store.set_mirror(event.id, mirror)
    found = await backend.store.find_by_mirror(
        RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("1700000000123"))
    )
    assert found is not None
    assert found.id == event.id
    assert found.mirrors == (mirror,)
    assert (
        await backend.store.find_by_mirror(
            RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("1700000000123"))
        )
        is None
    )


async def test_mirror_lookup_matches_room_and_id_of_one_mirror(backend: Backend) -> None:
    event = backend.events.message("two targets", room=TEAMS_ROOM)
    other = RoomRef(platform=MATRIX_ROOM.platform, room_id=RemoteRoomID("!other:example.org"))
    await backend.store.append(event, [MATRIX_ROOM, other])
    await backend.store.set_mirror(event.id, _sent(MATRIX_ROOM, "$one"))
    await backend.store.set_mirror(event.id, _sent(other, "$two"))
    crossed = RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID("$two"))
    assert await backend.store.find_by_mirror(crossed) is None
    found = await backend.store.find_by_mirror(replace(crossed, room=other))
    assert found is not None
    assert found.id == event.id


def _sent(room: RoomRef, message_id: str) -> Mirror:
    return Mirror(room=room, status=MirrorStatus.SENT, message_id=RemoteMessageID(message_id))


async def test_replay_after_delivery_does_not_queue_again(backend: Backend) -> None:
    event = backend.events.message("once", message_id="$once")
    await backend.store.append(event, [TEAMS_ROOM])
    (entry,) = await backend.store.pending(TEAMS_ROOM, limit=10)
    assert entry.event.id == event.id
    await backend.store.set_mirror(event.id, _sent(TEAMS_ROOM, "9"))
    replay = await backend.store.append(
        backend.events.message("once", message_id="$once"), [TEAMS_ROOM]
    )
    assert replay.duplicate
    assert replay.event.mirror_in(TEAMS_ROOM) == _sent(TEAMS_ROOM, "9")
    assert await backend.store.pending(TEAMS_ROOM, limit=10) == []
    assert await backend.store.rooms_with_work(limit=10) == []


async def test_append_many_stores_a_batch_in_order_and_spots_duplicates(
    backend: Backend,
) -> None:
    store = backend.store
    first = backend.events.message("a", message_id="$a")
    await store.append(first, [TEAMS_ROOM])
    batch = [
        backend.events.message("b", message_id="$b"),
        backend.events.message("a again", message_id="$a"),  # a redelivery
        backend.events.message("c", message_id="$c"),
        backend.events.message("b again", message_id="$b"),  # twice in one batch
    ]
    results = await store.append_many([(e, [TEAMS_ROOM]) for e in batch])
    assert [r.duplicate for r in results] == [False, True, False, True]
    assert [r.event.id for r in results] == [batch[0].id, first.id, batch[2].id, batch[0].id]
    assert results[0].event.mirrors == (Mirror(room=TEAMS_ROOM, updated_at=backend.clock.now()),)
    queued = await store.pending(TEAMS_ROOM, limit=10)
    assert [e.event.body.text for e in queued] == ["a", "b", "c"]
    assert await store.append_many([]) == []


async def test_the_queue_in_order_with_retry_and_settling(backend: Backend) -> None:
    store, clock = backend.store, backend.clock
    events = [backend.events.message(f"m{i}") for i in range(3)]
    for event in events:
        await store.append(event, [TEAMS_ROOM])
    teams_event = backend.events.message("from teams", room=TEAMS_ROOM)
    await store.append(teams_event, [MATRIX_ROOM])
    recorded = backend.events.message("recorded only")
    await store.append(recorded, [])

    assert await store.rooms_with_work(limit=10) == sorted(
        [TEAMS_ROOM, MATRIX_ROOM], key=lambda r: r.key
    )
    assert await store.rooms_with_work(limit=1) == [
        min([TEAMS_ROOM, MATRIX_ROOM], key=lambda r: r.key)
    ]
    entries = await store.pending(TEAMS_ROOM, limit=10)
    assert [e.event.id for e in entries] == [e.id for e in events]
    assert entries[0].target == TEAMS_ROOM
    assert entries[0].mirror.status is MirrorStatus.PENDING
    assert entries[0].not_before is None

    # The head fails: it stays queued, with when to try again.
    retry_at = clock.now() + timedelta(seconds=10)
    retrying = replace(
        entries[0].mirror,
        status=MirrorStatus.RETRYING,
        attempts=1,
        error="503",
        not_before=retry_at,
    )
    await store.set_mirror(events[0].id, retrying)
    head = (await store.pending(TEAMS_ROOM, limit=1))[0]
    assert head.event.id == events[0].id
    assert head.mirror == retrying
    assert head.not_before == retry_at

    await store.set_mirror(events[0].id, _sent(TEAMS_ROOM, "1"))
    failed = Mirror(room=TEAMS_ROOM, status=MirrorStatus.FAILED, error="forbidden")
    await store.set_mirror(events[1].id, failed)
    remaining = await store.pending(TEAMS_ROOM, limit=10)
    assert [e.event.id for e in remaining] == [events[2].id]
    await store.set_mirror(events[2].id, _sent(TEAMS_ROOM, "3"))
    assert await store.pending(TEAMS_ROOM, limit=10) == []
    assert await store.rooms_with_work(limit=10) == [MATRIX_ROOM]
    stored = await store.get(events[1].id)
    assert stored is not None
    assert stored.mirrors == (failed,)


async def test_a_mirror_for_a_new_target_is_added_and_queued(backend: Backend) -> None:
    store = backend.store
    event = backend.events.message("late target")
    await store.append(event, [])
    assert await store.pending(TEAMS_ROOM, limit=10) == []
    await store.set_mirror(event.id, Mirror(room=TEAMS_ROOM))
    (entry,) = await store.pending(TEAMS_ROOM, limit=10)
    assert entry.event.id == event.id
    await store.set_mirror(event.id, _sent(TEAMS_ROOM, "7"))
    assert await store.pending(TEAMS_ROOM, limit=10) == []


async def test_several_deliveries_are_recorded_together(backend: Backend) -> None:
    store = backend.store
    queued = [backend.events.message(f"q{i}") for i in range(3)]
    for event in queued:
        await store.append(event, [TEAMS_ROOM])
    unqueued = backend.events.message("no mirror yet")
    await store.append(unqueued, [])
    await store.set_mirrors(
        [(e.id, _sent(TEAMS_ROOM, f"r{i}")) for i, e in enumerate(queued)]
        + [(unqueued.id, _sent(TEAMS_ROOM, "late"))]
    )
    await store.set_mirrors([])
    assert await store.pending(TEAMS_ROOM, limit=10) == []
    for i, event in enumerate(queued):
        stored = await store.get(event.id)
        assert stored is not None
        assert stored.mirrors == (_sent(TEAMS_ROOM, f"r{i}"),)
    late = await store.get(unqueued.id)
    assert late is not None
    assert late.mirrors == (_sent(TEAMS_ROOM, "late"),)


async def test_room_lease_is_exclusive_until_released_or_expired(backend: Backend) -> None:
    store, clock = backend.store, backend.clock
    assert await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    assert not await store.lease_room(TEAMS_ROOM, "w2", now=clock.now(), ttl=LEASE)
    # The holder renews its own lease.
    assert await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    clock.advance(LEASE.total_seconds() + 1)
    # A dead holder's lease expires and another worker takes the room over.
    assert await store.lease_room(TEAMS_ROOM, "w2", now=clock.now(), ttl=LEASE)
    await store.release_room(TEAMS_ROOM, "w1")  # not the holder: no effect
    assert not await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    await store.release_room(TEAMS_ROOM, "w2")
    assert await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)


async def test_a_room_released_until_a_retry_is_not_leased_before(backend: Backend) -> None:
    store, clock = backend.store, backend.clock
    assert await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    await store.release_room(TEAMS_ROOM, "w1", until=clock.now() + timedelta(seconds=10))
    assert not await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    assert not await store.lease_room(TEAMS_ROOM, "w2", now=clock.now(), ttl=LEASE)
    clock.advance(11)
    assert await store.lease_room(TEAMS_ROOM, "w2", now=clock.now(), ttl=LEASE)


async def test_leases_are_renewed_only_by_their_live_holder(backend: Backend) -> None:
    store, clock = backend.store, backend.clock
    rooms = [TEAMS_ROOM, MATRIX_ROOM]
    assert await store.renew_rooms(rooms, "w1", now=clock.now(), ttl=LEASE) == set()
    assert await store.renew_rooms([], "w1", now=clock.now(), ttl=LEASE) == set()
    assert await store.lease_room(TEAMS_ROOM, "w1", now=clock.now(), ttl=LEASE)
    assert await store.lease_room(MATRIX_ROOM, "w2", now=clock.now(), ttl=LEASE)
    clock.advance(20)
    assert await store.renew_rooms(rooms, "w1", now=clock.now(), ttl=LEASE) == {TEAMS_ROOM.key}
    clock.advance(20)  # 40 s after leasing, but 20 s after renewing: still held
    assert not await store.lease_room(TEAMS_ROOM, "w2", now=clock.now(), ttl=LEASE)
    assert await store.renew_rooms(rooms, "w2", now=clock.now(), ttl=LEASE) == set()  # expired
    clock.advance(LEASE.total_seconds() + 1)
    assert await store.renew_rooms(rooms, "w1", now=clock.now(), ttl=LEASE) == set()


async def test_a_link_keeps_its_thread_style(backend: Backend) -> None:
    link = RoomLink(
        matrix_room=MATRIX_ROOM,
        teams_room=TEAMS_ROOM,
        created_at=backend.clock.now(),
        threads=ThreadStyle.REPLY,
    )
    await backend.store.save_link(link)
    assert await backend.store.links_for(MATRIX_ROOM) == [link]


async def test_room_links(backend: Backend) -> None:
    link = RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=backend.clock.now())
    await backend.store.save_link(link)
    await backend.store.save_link(link)
    assert [lnk.teams_room for lnk in await backend.store.links_for(MATRIX_ROOM)] == [TEAMS_ROOM]
    assert [lnk.matrix_room for lnk in await backend.store.links_for(TEAMS_ROOM)] == [MATRIX_ROOM]
    assert len(await backend.store.all_links()) == 1
    await backend.store.remove_link(link)
    assert await backend.store.links_for(MATRIX_ROOM) == []


async def test_state_store(backend: Backend) -> None:
    state = backend.state
    assert await state.insert_once("matrix_transactions", "txn1", {"events": 2})
    assert not await state.insert_once("matrix_transactions", "txn1", {"events": 3})
    assert await state.get("matrix_transactions", "txn1") == {"events": 2}
    await state.put("teams_conversations", "19:a", {"service_url": "https://x"})
    await state.put("teams_conversations", "19:a", {"service_url": "https://y"})
    assert await state.get("teams_conversations", "19:a") == {"service_url": "https://y"}
    await state.delete("teams_conversations", "19:a")
    assert await state.get("teams_conversations", "19:a") is None
