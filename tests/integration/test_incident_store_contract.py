"""One contract for every IncidentStore: the in-memory fake and MongoDB behave alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from bridge.errors import StoreError
from bridge.incidents.memory_store import MemoryIncidentStore
from bridge.incidents.model import (
    ActionItem,
    Incident,
    IncidentFilter,
    Role,
    Severity,
    Status,
)
from bridge.incidents.mongo_store import MongoIncidentStore
from bridge.model import IncidentID, Platform, RemoteUserID, Sender
from bridge.ports import IncidentStore
from bridge.timeline.codec import CursorError
from devtools.servers import MongoServer
from tests.support.fakes import ALICE, EPOCH, MATRIX_ROOM, TEAMS_ROOM

BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob")


@pytest.fixture(params=["memory", "mongo"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[IncidentStore]:
    if request.param == "memory":
        yield MemoryIncidentStore()
        return
    server: MongoServer = request.getfixturevalue("mongo_server")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
    name = f"incidents_{uuid.uuid4().hex[:12]}"
    mongo = MongoIncidentStore(client.get_database(name, write_concern=WriteConcern(w=1, j=True)))
    await mongo.ensure_indexes()
    await mongo.ensure_indexes()  # idempotent
    yield mongo
    await client.drop_database(name)
    await client.close()


def incident(number: int, *, minutes: float = 0, severity: Severity = Severity.SEV2) -> Incident:
    return Incident(
        id=IncidentID(f"INC-{number}"),
        title=f"Incident {number}",
        severity=severity,
        status=Status.INVESTIGATING,
        declared_at=EPOCH + timedelta(minutes=minutes),
        declared_by=ALICE,
        declared_in=MATRIX_ROOM,
    )


async def test_ids_are_numbered_and_never_reused(store: IncidentStore) -> None:
    first = await store.next_id()
    ids = await asyncio.gather(*(store.next_id() for _ in range(5)))
    assert first == "INC-1"
    assert sorted(ids, key=lambda i: int(i.split("-")[1])) == [f"INC-{n}" for n in range(2, 7)]


async def test_round_trip_keeps_every_field(store: IncidentStore) -> None:
    full = replace(
        incident(1),
        rooms=(MATRIX_ROOM, TEAMS_ROOM),
        roles={Role.COMMANDER: BOB, Role.SCRIBE: ALICE},
        acknowledged_at=EPOCH + timedelta(seconds=30, microseconds=1500),
        mitigated_at=EPOCH + timedelta(minutes=5),
        resolved_at=EPOCH + timedelta(minutes=9),
        status=Status.RESOLVED,
        summary="a bad deploy",
        impact={"customers": "300", "regions": "eu-west"},
        action_items=(ActionItem(text="add an alert", by=BOB, at=EPOCH),),
        headers={MATRIX_ROOM.key: "$header", TEAMS_ROOM.key: "1700000000000"},
        postmortem="# INC-1",
        version=7,
    )
    await store.create(full)
    got = await store.get(full.id)
    # Stored times are kept to the millisecond; a new incident starts at version 0.
    assert got == replace(
        full, acknowledged_at=EPOCH + timedelta(seconds=30, milliseconds=1), version=0
    )
    assert got is not None
    assert not got.open
    assert await store.get(IncidentID("INC-404")) is None


async def test_create_refuses_an_existing_id(store: IncidentStore) -> None:
    await store.create(incident(1))
    with pytest.raises(StoreError):
        await store.create(incident(1))


async def test_save_is_conditional_on_the_version(store: IncidentStore) -> None:
    await store.create(incident(1))
    read = await store.get(IncidentID("INC-1"))
    assert read is not None
    saved = await store.save(replace(read, severity=Severity.SEV1))
    assert saved is not None
    assert saved.version == 1
    assert saved.severity is Severity.SEV1
    # A change made from the old read lost the race: nothing is written.
    assert await store.save(replace(read, title="stale")) is None
    again = await store.get(IncidentID("INC-1"))
    assert again == saved
    assert await store.save(replace(incident(2), version=0)) is None  # never created


async def test_find_filters_and_pages_newest_first(store: IncidentStore) -> None:
    for number in range(1, 8):
        severity = Severity.SEV1 if number % 2 else Severity.SEV3
        await store.create(incident(number, minutes=number, severity=severity))
    # Two declared at the same millisecond are ordered by id.
    await store.create(incident(8, minutes=7))
    resolved = await store.get(IncidentID("INC-2"))
    assert resolved is not None
    await store.save(replace(resolved, status=Status.RESOLVED))

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.find(IncidentFilter(), cursor=cursor, limit=3)
        seen += [i.id for i in page.incidents]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["INC-8", "INC-7", "INC-6", "INC-5", "INC-4", "INC-3", "INC-2", "INC-1"]

    sev1 = await store.find(IncidentFilter(severity=Severity.SEV1))
    assert [i.id for i in sev1.incidents] == ["INC-7", "INC-5", "INC-3", "INC-1"]
    assert sev1.next_cursor is None
    open_ = await store.find(IncidentFilter(open_only=True))
    assert "INC-2" not in [i.id for i in open_.incidents]
    assert len(open_.incidents) == 7
    done = await store.find(IncidentFilter(status=Status.RESOLVED))
    assert [i.id for i in done.incidents] == ["INC-2"]
    window = await store.find(
        IncidentFilter(
            declared_after=EPOCH + timedelta(minutes=3),
            declared_before=EPOCH + timedelta(minutes=5),
        )
    )
    assert [i.id for i in window.incidents] == ["INC-4", "INC-3"]


async def test_a_bad_cursor_is_refused(store: IncidentStore) -> None:
    with pytest.raises(CursorError):
        await store.find(IncidentFilter(), cursor="not-a-cursor")
