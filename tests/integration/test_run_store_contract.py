"""One contract for every RunStore: the in-memory fake and MongoDB behave alike."""

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

from bridge.model import EventID
from bridge.runbooks.memory_store import MemoryRunStore
from bridge.runbooks.model import Approval, Run, RunID, RunState
from bridge.runbooks.mongo_store import MongoRunStore
from bridge.runbooks.store import RunStore
from devtools.servers import MongoServer
from tests.support.fakes import ALICE, EPOCH, MATRIX_ROOM


@pytest.fixture(params=["memory", "mongo"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RunStore]:
    if request.param == "memory":
        yield MemoryRunStore()
        return
    server: MongoServer = request.getfixturevalue("mongo_server")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
    name = f"runs_{uuid.uuid4().hex[:12]}"
    mongo = MongoRunStore(client.get_database(name, write_concern=WriteConcern(w=1, j=True)))
    await mongo.ensure_indexes()
    await mongo.ensure_indexes()  # idempotent
    yield mongo
    await client.drop_database(name)
    await client.close()


async def new_run(store: RunStore, command: str, **changes: Any) -> Run:
    run = Run(
        id=await store.next_id(),
        runbook="restart",
        runbook_digest="d1",
        args={"service": "checkout", "replicas": 3, "force": True},
        args_digest="a1",
        command_event=EventID(command),
        requested_by=ALICE,
        room=MATRIX_ROOM,
        incident_id=None,
        state=RunState.REQUESTED,
        created_at=EPOCH,
    )
    return replace(run, **changes)


async def test_ids_are_numbered_and_never_reused(store: RunStore) -> None:
    ids = await asyncio.gather(*(store.next_id() for _ in range(20)))
    assert len(set(ids)) == 20
    assert all(i.startswith("R-") for i in ids)


async def test_a_run_round_trips(store: RunStore) -> None:
    run = await new_run(
        store,
        "$c1",
        approvals=(Approval(by=ALICE, at=EPOCH, event_id=EventID("$a")),),
        started_at=EPOCH,
        owner="pod-a",
        heartbeat_at=EPOCH,
        output="hello",
        message="01NOTICE",
    )
    created = await store.create(run)
    assert created == run
    assert await store.get(run.id) == run
    assert await store.by_command(EventID("$c1")) == run
    assert await store.get(RunID("R-999")) is None


async def test_one_run_per_command_event(store: RunStore) -> None:
    first = await new_run(store, "$c1")
    assert await store.create(first) is not None
    second = await new_run(store, "$c1")
    assert await store.create(second) is None
    assert await store.get(second.id) is None


async def test_saves_are_conditional_on_the_version(store: RunStore) -> None:
    run = await store.create(await new_run(store, "$c1"))
    assert run is not None
    saved = await store.save(replace(run, state=RunState.RUNNING))
    assert saved is not None
    assert saved.version == 1
    assert await store.save(replace(run, state=RunState.FAILED)) is None
    stored = await store.get(run.id)
    assert stored is not None
    assert stored.state is RunState.RUNNING


async def test_heartbeats_never_bump_the_version_nor_go_backwards(store: RunStore) -> None:
    run = await store.create(
        await new_run(store, "$c1", state=RunState.RUNNING, owner="pod-a", heartbeat_at=EPOCH)
    )
    assert run is not None
    later = EPOCH + timedelta(seconds=10)
    assert await store.heartbeat([run.id], "pod-a", later) == {run.id}
    assert await store.heartbeat([run.id], "pod-b", later) == set()
    saved = await store.save(replace(run, output="more"))  # an older heartbeat in hand
    assert saved is not None
    assert saved.heartbeat_at == later
    assert saved.version == 1


async def test_find_and_count_by_state(store: RunStore) -> None:
    for number, state in enumerate([RunState.RUNNING, RunState.RUNNING, RunState.SUCCEEDED]):
        await store.create(
            await new_run(
                store, f"$c{number}", state=state, created_at=EPOCH + timedelta(seconds=number)
            )
        )
    await store.create(await new_run(store, "$other", runbook="flush", state=RunState.RUNNING))
    assert await store.count("restart", [RunState.RUNNING]) == 2
    running = await store.find([RunState.RUNNING], runbook="restart")
    assert [r.command_event for r in running] == ["$c0", "$c1"]
    assert len(await store.find([RunState.RUNNING])) == 3
    assert len(await store.find([RunState.RUNNING], limit=1)) == 1


async def test_orphan_only_a_stale_or_own_running_run(store: RunStore) -> None:
    beat = EPOCH + timedelta(seconds=100)
    run = await store.create(
        await new_run(store, "$c1", state=RunState.RUNNING, owner="pod-a", heartbeat_at=beat)
    )
    assert run is not None
    unknown = replace(run, state=RunState.UNKNOWN)
    assert await store.orphan(unknown, stale_before=beat, owner=None) is None  # fresh
    assert await store.orphan(unknown, stale_before=beat, owner="pod-b") is None
    marked = await store.orphan(unknown, stale_before=beat, owner="pod-a")  # its own, restarted
    assert marked is not None
    assert marked.state is RunState.UNKNOWN
    assert await store.orphan(marked, stale_before=beat + timedelta(days=1), owner=None) is None
    other = await store.create(
        await new_run(store, "$c2", state=RunState.RUNNING, owner="pod-a", heartbeat_at=EPOCH)
    )
    assert other is not None
    stale = await store.orphan(
        replace(other, state=RunState.UNKNOWN), stale_before=beat, owner=None
    )
    assert stale is not None
